"""The real CIFAR-10 sample shipped inside the package, so the main job runs offline.

    train = embedded_sample("train")   # 5,000 training images 0..4999, JPEG-decoded
    test = embedded_sample("test")     # 1,000 test images 0..999, exact original pixels

``diffjax/assets/cifar10_sample.npz`` holds the training images as the JPEG bytes they were
distributed in (decoded here with Pillow) and the test images as one lossless PNG sheet;
``cifar10_sample.json`` is its data card (source, counts, sha256 digests), written by
``experiments/make_embedded_sample.py``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io
import json

import numpy as np
from PIL import Image

from diffjax.data.archive import DatasetFormatError, decode_image
from diffjax.data.dataset import Dataset

ASSET = "cifar10_sample.npz"
CARD = "cifar10_sample.json"


def _asset(name: str):
    return importlib.resources.files("diffjax") / "assets" / name


@functools.cache
def _read() -> dict[str, np.ndarray]:
    raw = _asset(ASSET).read_bytes()
    card = json.loads(_asset(CARD).read_text())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != card["sha256"][ASSET]:
        raise DatasetFormatError(
            f"embedded sample {ASSET} is corrupt: sha256 {digest}, data card says "
            f"{card['sha256'][ASSET]}; reinstall diffjax"
        )
    with np.load(io.BytesIO(raw)) as z:
        return {k: z[k] for k in z.files}


@functools.cache
def _split(split: str) -> Dataset:
    z = _read()
    names = tuple(str(n) for n in z["class_names"])
    if split == "train":
        ends = np.cumsum(z["train_jpeg_lengths"])
        starts = ends - z["train_jpeg_lengths"]
        blob = z["train_jpeg"].tobytes()
        images = np.stack(
            [
                decode_image(blob[s:e], f"{ASSET}:train[{i}]", 32)
                for i, (s, e) in enumerate(zip(starts, ends, strict=True))
            ]
        )
        labels = z["train_labels"]
    else:
        with Image.open(io.BytesIO(z["test_png"].tobytes())) as im:
            images = np.asarray(im.convert("RGB")).reshape(-1, 32, 32, 3)
        labels = z["test_labels"]
    images.flags.writeable = False  # shared by every caller through the cache
    labels = labels.astype(np.int32)
    labels.flags.writeable = False
    return Dataset(images, labels, names, f"embedded/{split}")


def embedded_sample(split: str = "train") -> Dataset:
    """The shipped CIFAR-10 sample: ``"train"`` (5,000, JPEG-decoded) or ``"test"`` (1,000 exact).

    Returns:
      A :class:`Dataset` of [N, 32, 32, 3] uint8 images (read-only arrays, cached).
    """
    if split not in ("train", "test"):
        raise ValueError(f"the embedded sample has splits 'train' and 'test', got {split!r}")
    return _split(split)
