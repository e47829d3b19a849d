"""A dataset split in memory: uint8 NHWC images, int32 labels and class names."""

from __future__ import annotations

import dataclasses
import os
import pathlib

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

    def renamed(self, path: str | os.PathLike) -> Dataset:
        """The same split with the class names of a text file, one per line in label order
        (e.g. readable ImageNet names for the CLIP prompts instead of WordNet ids)."""
        names = tuple(pathlib.Path(path).read_text().splitlines())
        if len(names) != self.num_classes:
            raise ValueError(f"{path} has {len(names)} names, the data {self.num_classes} classes")
        return dataclasses.replace(self, class_names=names)
