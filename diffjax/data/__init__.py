"""Datasets as uint8 NHWC images, int32 labels and class names.

ds = load_dataset("synthetic", "train")   # ds.images [N, H, W, C] uint8, ds.labels [N] int32
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split of an image-classification dataset.

    Attributes:
      images: [N, H, W, C] uint8.
      labels: [N] int32 in [0, len(class_names)).
      class_names: one name per class.
      name: where it came from (for records).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images"
            )
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.class_names)
        ):
            raise ValueError("labels outside [0, num_classes)")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def take(self, n: int) -> Dataset:
        """The first ``n`` examples."""
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])


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


def load_dataset(name: str, split: str, data_dir: str | None = None, **kwargs) -> Dataset:
    """Load split ``split`` ("train" or "test") of dataset ``name``."""
    if name == "synthetic":
        return synthetic(kwargs.get("n", 512), seed=0 if split == "train" else 1)
    raise ValueError(f"unknown dataset {name!r}")
