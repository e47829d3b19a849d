"""Synthetic data for tests: random images whose class is written into their mean colour."""

from __future__ import annotations

import numpy as np

from diffjax.data.dataset import Dataset


def synthetic(
    n: int, image_size: int = 32, num_classes: int = 10, channels: int = 3, seed: int = 0
) -> Dataset:
    """Random images whose class is written into their mean colour: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    base = (labels[:, None, None, None] + 0.5) / num_classes * 255
    noise = rng.normal(0, 20, (n, image_size, image_size, channels))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Dataset(images, labels, tuple(f"class_{i}" for i in range(num_classes)), "synthetic")
