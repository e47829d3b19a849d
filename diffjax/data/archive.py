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

# The largest file of a supported dataset is CIFAR-100's train pickle (~155 MB); a member
# declaring more than this is refused before it is read.
MAX_MEMBER_BYTES = 512 << 20


class FileTree:
    """Files below a top-level folder, addressed by paths relative to that folder."""

    def __init__(self, source: str, files: dict[str, object], reader, size):
        self.source = source
        self._files = files
        self._reader = reader
        self._size = size

    def names(self) -> list[str]:
        """All file paths, sorted."""
        return sorted(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str) -> bytes:
        """The bytes of ``name``, after checking its declared size against
        :data:`MAX_MEMBER_BYTES`.

        Raises:
          DatasetUnavailableError: no such file.
          DatasetFormatError: the file declares more than :data:`MAX_MEMBER_BYTES`.
        """
        if name not in self._files:
            raise DatasetUnavailableError(f"{self.source} has no file {name!r}")
        size = self._size(self._files[name])
        if size > MAX_MEMBER_BYTES:
            raise DatasetFormatError(
                f"{self.source}:{name} is {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit "
                "of a dataset file (not the official archive)"
            )
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
        yield FileTree(str(path), files, lambda p: p.read_bytes(), lambda p: p.stat().st_size)
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
                yield FileTree(str(path), files, z.read, lambda i: i.file_size)
        else:
            with tarfile.open(path) as t:
                files = {
                    m.name[len(prefix) :]: m
                    for m in t.getmembers()
                    if m.name.startswith(prefix) and m.isfile()
                }
                yield FileTree(
                    str(path), files, lambda m: t.extractfile(m).read(), lambda m: m.size
                )
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
