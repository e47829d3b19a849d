"""Datasets as uint8 NHWC images, int32 labels and class names.

    ds = load_dataset("cifar10", "train")     # ds.images [N, H, W, C] uint8, ds.labels [N] int32
    ds = load_dataset("embedded", "test")     # the real CIFAR-10 sample shipped with the package

Names: ``"cifar10"``, ``"cifar100"``, ``"tiny_imagenet"`` (official archives, looked up in the
data directory and downloaded if absent), ``"tfds:<name>"`` (a prepared tensorflow-datasets
dataset), ``"embedded"`` and ``"synthetic"``. The data directory is the ``data_dir`` argument,
else ``$DIFFJAX_DATA_DIR``, else ``~/.cache/diffjax``.
"""

from __future__ import annotations

from diffjax.data.archive import DatasetFormatError
from diffjax.data.cifar import load_cifar
from diffjax.data.dataset import Dataset
from diffjax.data.download import (
    ChecksumError,
    DatasetUnavailableError,
    UnverifiedDatasetWarning,
    default_data_dir,
    resolve_data_dir,
)
from diffjax.data.embedded import embedded_sample
from diffjax.data.synthetic import synthetic
from diffjax.data.tfds_source import load_tfds
from diffjax.data.tiny_imagenet import load_tiny_imagenet

NAMES = ("cifar10", "cifar100", "tiny_imagenet", "tfds:<name>", "embedded", "synthetic")


def load_dataset(
    name: str, split: str, data_dir: str | None = None, *, download: bool = True, **kwargs
) -> Dataset:
    """Load split ``split`` of dataset ``name``.

    Args:
      name: one of :data:`NAMES`.
      split: ``"train"`` or ``"test"`` (Tiny ImageNet: "test" is the labelled validation set;
        ``tfds:`` names take any TFDS split string).
      data_dir: where the archives or extracted folders are (see the module docstring); for
        ``tfds:`` names, the TFDS data directory.
      download: fetch a missing official archive (checksum-verified) instead of raising.
      **kwargs: ``synthetic``: ``n`` (default 512), ``image_size``, ``num_classes``;
        ``tfds:``: ``image_size``.

    Raises:
      DatasetUnavailableError: not on disk and not downloadable; says which file to put where.
      DatasetFormatError: a file exists but is corrupt or not in the official format.
    """
    if name.startswith("tfds:"):
        return load_tfds(name[len("tfds:") :], split, data_dir, **kwargs)
    if name == "synthetic":
        if split not in ("train", "test"):
            raise ValueError(f"synthetic has splits 'train' and 'test', got {split!r}")
        return synthetic(kwargs.pop("n", 512), seed=0 if split == "train" else 1, **kwargs)
    if kwargs:
        raise TypeError(f"{name} takes no options {sorted(kwargs)}")
    if name == "embedded":
        return embedded_sample(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, data_dir, download)
    if name == "tiny_imagenet":
        return load_tiny_imagenet(split, data_dir, download)
    raise ValueError(f"unknown dataset {name!r}; choose from {NAMES}")


__all__ = [
    "NAMES",
    "ChecksumError",
    "Dataset",
    "DatasetFormatError",
    "DatasetUnavailableError",
    "default_data_dir",
    "embedded_sample",
    "load_dataset",
    "resolve_data_dir",
    "synthetic",
    "UnverifiedDatasetWarning",
]
