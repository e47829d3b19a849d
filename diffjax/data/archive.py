"""Dataset files: read them from an extracted folder, a .tar.gz or a .zip alike; decode images.

with open_tree(path, "cifar-10-batches-py") as tree:
    raw = tree.read("data_batch_1")          # bytes of <folder>/data_batch_1
    names = tree.names()                     # every file, relative to <folder>/
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import tarfile
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from diffjax.data.download import DatasetFormatError, DatasetUnavailableError


class FileTree:
    """Files below a top-level folder, addressed by paths relative to that folder."""

    def __init__(self, source: str, files: dict[str, object], reader):
        self.source = source
        self._files = files
        self._reader = reader

    def names(self) -> list[str]:
        """All file paths, sorted."""
        return sorted(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str) -> bytes:
        if name not in self._files:
            raise DatasetUnavailableError(f"{self.source} has no file {name!r}")
        return self._reader(self._files[name])


@contextlib.contextmanager
def open_tree(path: str | os.PathLike, folder: str) -> Iterator[FileTree]:
    """Open the extracted ``folder`` (``path`` is that folder) or an archive holding ``folder/``.

    Raises:
      DatasetUnavailableError: ``path`` is missing.
      DatasetFormatError: the archive is corrupt or truncated.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
        yield FileTree(str(path), files, lambda p: p.read_bytes())
        return
    if not path.is_file():
        raise DatasetUnavailableError(f"{path} does not exist")
    prefix = folder.rstrip("/") + "/"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                files = {
                    i.filename[len(prefix) :]: i
                    for i in z.infolist()
                    if i.filename.startswith(prefix) and not i.is_dir()
                }
                yield FileTree(str(path), files, z.read)
        else:
            with tarfile.open(path) as t:
                files = {
                    m.name[len(prefix) :]: m
                    for m in t.getmembers()
                    if m.name.startswith(prefix) and m.isfile()
                }
                yield FileTree(str(path), files, lambda m: t.extractfile(m).read())
    except (DatasetUnavailableError, DatasetFormatError):
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DatasetFormatError(f"cannot read archive {path}: {type(e).__name__}: {e}") from e


def decode_image(raw: bytes, source: str, size: int | None = None) -> np.ndarray:
    """JPEG/PNG bytes → [H, W, 3] uint8 (grayscale converted to RGB); checks the size if given."""
    try:
        with Image.open(io.BytesIO(raw)) as im:
            x = np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises several types on corrupt images
        raise DatasetFormatError(f"{source}: cannot decode image ({type(e).__name__}: {e})") from e
    if size is not None and x.shape[:2] != (size, size):
        raise DatasetFormatError(f"{source}: image is {x.shape[:2]}, expected {size}x{size}")
    return x
