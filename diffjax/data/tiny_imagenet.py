"""Tiny ImageNet (200 classes, 64x64 RGB) from the official ``tiny-imagenet-200`` zip layout.

    tiny-imagenet-200/wnids.txt                   the 200 WordNet ids, one a line
    tiny-imagenet-200/words.txt                   "<wnid>\\t<names, comma separated>"
    tiny-imagenet-200/train/<wnid>/images/*.JPEG  500 training images per class
    tiny-imagenet-200/val/images/*.JPEG           10,000 labelled validation images
    tiny-imagenet-200/val/val_annotations.txt     "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"

The official test images carry no labels, so the "test" split is the labelled validation set.
"""

from __future__ import annotations

import os

import numpy as np

from diffjax.data.archive import DatasetFormatError, decode_image, open_tree
from diffjax.data.dataset import Dataset
from diffjax.data.download import Remote, locate, resolve_data_dir

TINY_IMAGENET_REMOTE = Remote(
    name="Tiny ImageNet",
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    filename="tiny-imagenet-200.zip",
    # The only digest published for this archive is its md5.
    checksum="md5:90528d7ca1a48142e341f4ef8d21d0de",
    folder="tiny-imagenet-200",
)
IMAGE_SIZE = 64


def _lines(tree, name: str) -> list[str]:
    return [ln for ln in tree.read(name).decode().splitlines() if ln.strip()]


def read_tiny_imagenet(path: str | os.PathLike, split: str) -> Dataset:
    """Read ``split`` ("train", or "test" = the labelled validation set) of Tiny ImageNet.

    Args:
      path: the extracted ``tiny-imagenet-200`` folder or the official zip.

    Returns:
      A :class:`Dataset`: images [N, 64, 64, 3] uint8 and labels [N] int32 indexing the sorted
      WordNet ids; class names are the first name ``words.txt`` gives each id.
    """
    if split == "val":
        split = "test"
    if split not in ("train", "test"):
        raise ValueError(f"tiny_imagenet has splits 'train' and 'test' (= val), got {split!r}")
    with open_tree(path, TINY_IMAGENET_REMOTE.folder) as tree:
        wnids = sorted(_lines(tree, "wnids.txt"))
        index = {w: i for i, w in enumerate(wnids)}
        words = dict(ln.split("\t", 1) for ln in _lines(tree, "words.txt") if "\t" in ln)
        class_names = tuple(words.get(w, w).split(",")[0].strip() for w in wnids)
        if split == "train":
            files = []
            for n in tree.names():
                parts = n.split("/")
                if len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
                    if parts[1] not in index:
                        raise DatasetFormatError(f"{tree.source}: {n} is not in wnids.txt")
                    files.append((n, index[parts[1]]))
        else:
            files = []
            for ln in _lines(tree, "val/val_annotations.txt"):
                name, wnid = ln.split("\t")[:2]
                if wnid not in index:
                    raise DatasetFormatError(f"{tree.source}: val image {name} has unknown {wnid}")
                files.append((f"val/images/{name}", index[wnid]))
        if not files:
            raise DatasetFormatError(f"{tree.source}: no {split} images found")
        images = np.stack(
            [decode_image(tree.read(n), f"{tree.source}:{n}", IMAGE_SIZE) for n, _ in files]
        )
    labels = np.asarray([y for _, y in files], np.int32)
    return Dataset(images, labels, class_names, f"tiny_imagenet/{split}")


def load_tiny_imagenet(split: str, data_dir=None, download: bool = True) -> Dataset:
    """Find (or download) Tiny ImageNet under the data directory and read ``split``."""
    root = resolve_data_dir(data_dir)
    return read_tiny_imagenet(locate(root, TINY_IMAGENET_REMOTE, download), split)
