"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

The archives hold Python-2 pickles (byte-string keys) of dicts with ``data`` uint8 [N, 3072]
(rows channel-major: 1024 R, then G, then B values of a 32x32 image, row-major) and a label list
(``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100). Reading them needs only numpy and
pickle; the unpickler accepts nothing but the numpy array reconstruction those files contain, so
a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np

from diffjax.data.archive import DatasetFormatError, open_tree
from diffjax.data.dataset import Dataset
from diffjax.data.download import Remote, locate, resolve_data_dir

CIFAR10_REMOTE = Remote(
    name="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    checksum="sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    folder="cifar-10-batches-py",
)
CIFAR100_REMOTE = Remote(
    name="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz",
    checksum="sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    folder="cifar-100-python",
)

# name -> (remote, files per split, meta file, class-name key, label key)
_LAYOUTS = {
    "cifar10": (
        CIFAR10_REMOTE,
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
        b"label_names",
        b"labels",
    ),
    "cifar100": (
        CIFAR100_REMOTE,
        {"train": ["train"], "test": ["test"]},
        "meta",
        b"fine_label_names",
        b"fine_labels",
    ),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def unpickle(raw: bytes, source: str) -> dict:
    """A CIFAR pickle as a dict with byte-string keys.

    Raises:
      DatasetFormatError: the bytes are not such a pickle.
    """
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on corrupt input
        raise DatasetFormatError(f"{source}: not a CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{source}: expected a dict, got {type(d).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}


def _field(d: dict, key: bytes, source: str):
    if key not in d:
        raise DatasetFormatError(f"{source}: missing key {key!r} (have {sorted(d)})")
    return d[key]


def _labels(y: np.ndarray, k: int, source: str) -> np.ndarray:
    """``y`` as int32 if every label is an integer in [0, k); a cast would turn 3.7 into 3 and
    2**32 + 3 into 3."""
    if y.dtype.kind not in "iu" or (y.size and not (y.min() >= 0 and y.max() < k)):
        bad = y if y.dtype.kind not in "iu" else y[(y < 0) | (y >= k)]
        raise DatasetFormatError(
            f"{source}: labels must be integers in [0, {k}), got {y.dtype} values such as "
            f"{bad.ravel()[:3].tolist()}"
        )
    return y.astype(np.int32)


def read_cifar(path: str | os.PathLike, name: str, split: str) -> Dataset:
    """Read split ``split`` ("train" or "test") of ``name`` ("cifar10" or "cifar100").

    Args:
      path: the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or the
        official ``.tar.gz``.

    Returns:
      A :class:`Dataset`: images [N, 32, 32, 3] uint8, labels [N] int32 (the fine
      labels for CIFAR-100), class names in label order.
    """
    remote, files, meta_file, names_key, labels_key = _LAYOUTS[name]
    if split not in files:
        raise ValueError(f"{name} has splits 'train' and 'test', got {split!r}")
    images, labels = [], []
    with open_tree(path, remote.folder) as tree:
        source = f"{tree.source}:{meta_file}"
        meta = unpickle(tree.read(meta_file), source)
        class_names = tuple(
            n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, names_key, source)
        )
        for file in files[split]:
            source = f"{tree.source}:{file}"
            batch = unpickle(tree.read(file), source)
            data = np.asarray(_field(batch, b"data", source))
            y = np.asarray(_field(batch, labels_key, source))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DatasetFormatError(
                    f"{source}: data must be uint8 [N, 3072], got {data.dtype} {data.shape}"
                )
            if y.shape != (data.shape[0],):
                raise DatasetFormatError(
                    f"{source}: {y.shape[0] if y.ndim else 0} labels for {data.shape[0]} images"
                )
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(_labels(y, len(class_names), source))
    return Dataset(
        np.ascontiguousarray(np.concatenate(images)),
        np.concatenate(labels),
        class_names,
        f"{name}/{split}",
    )


def load_cifar(name: str, split: str, data_dir=None, download: bool = True) -> Dataset:
    """Find (or download) ``name`` under the data directory and read ``split``."""
    root = resolve_data_dir(data_dir)
    return read_cifar(locate(root, _LAYOUTS[name][0], download), name, split)
