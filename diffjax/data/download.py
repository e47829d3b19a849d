"""Where datasets live on disk, and how an official archive gets there.

    root = resolve_data_dir(data_dir)     # argument, $DIFFJAX_DATA_DIR, ~/.cache/diffjax
    path = locate(root, CIFAR10_REMOTE)   # the extracted folder or the archive

A download streams into a temporary file next to its destination, is checked against the
archive's published digest and only then renamed into place; extraction goes to a temporary
folder that is renamed as a whole. An interrupted run therefore leaves no half-written file or
folder under the final names. When a dataset is neither on disk nor downloadable, the error says
which file to put in which folder.

What is already on disk is checked too, with or without downloading: an archive against the
published digest (once; ``<archive>.verified`` records the digest with the file's size and
modification time, so later runs skip the hashing while the file is unchanged), and a folder
extracted by diffjax against the digests of its files recorded at extraction
(``<folder>.verified``). A folder extracted by hand cannot be checked: it is used with an
:class:`UnverifiedDatasetWarning`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterator

import tqdm

ENV_VAR = "DIFFJAX_DATA_DIR"
_CHUNK = 1 << 20


class DatasetUnavailableError(FileNotFoundError):
    """A dataset that is neither on disk nor downloadable; the message says what to put where."""


class DatasetFormatError(ValueError):
    """A dataset file that exists but is not in the expected format (corrupt, truncated, wrong)."""


class ChecksumError(ValueError):
    """A file whose digest differs from the published one."""


class UnverifiedDatasetWarning(UserWarning):
    """A dataset folder that diffjax did not extract, so nothing vouches for its content."""


@dataclasses.dataclass(frozen=True)
class Remote:
    """An official dataset archive.

    Attributes:
      name: the dataset name used in messages.
      url: the official download address.
      filename: the archive's file name.
      checksum: ``"<algorithm>:<hex digest>"`` as published (``sha256`` or ``md5``).
      folder: the top-level folder the archive extracts to.
    """

    name: str
    url: str
    filename: str
    checksum: str
    folder: str


def default_data_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/diffjax``, or ``~/.cache/diffjax``."""
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "diffjax"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The data directory: ``data_dir`` if given, else ``$DIFFJAX_DATA_DIR``, else the cache."""
    if data_dir is not None:
        return pathlib.Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]).expanduser()
    return default_data_dir()


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes (``algorithm``: any name ``hashlib.new`` takes)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, checksum: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has digest ``checksum`` ("algo:hex")."""
    algorithm, _, expected = checksum.partition(":")
    if not expected:
        raise ValueError(f"checksum must look like 'sha256:<hex>', got {checksum!r}")
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected}")


@contextlib.contextmanager
def _temporary(directory: pathlib.Path, prefix: str, folder: bool) -> Iterator[pathlib.Path]:
    """A temporary file or folder in ``directory`` that is removed unless renamed away."""
    if folder:
        tmp = pathlib.Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
    else:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".part")
        os.close(fd)
        tmp = pathlib.Path(name)
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def fetch(
    url: str,
    destination: str | os.PathLike,
    checksum: str,
    progress: Callable[[int, int | None], None] | None = None,
) -> pathlib.Path:
    """Download ``url`` to ``destination``, verified against ``checksum`` ("algo:hex").

    Args:
      url: any address ``urllib`` opens (``https://``, ``file://``).
      destination: the final file path; it appears only once the digest matches.
      checksum: the published digest.
      progress: called with (bytes so far, total bytes or None) after every chunk; ``None``
        shows a tqdm bar on stderr (hidden when stderr is not a terminal).

    Raises:
      ChecksumError: the downloaded bytes do not match ``checksum`` (nothing is kept).
      urllib.error.URLError, OSError: the download failed (nothing is kept).
    """
    destination = pathlib.Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(destination.parent, f".{destination.name}.", folder=False) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = None
            if progress is None:
                bar = tqdm.tqdm(
                    total=total, unit="B", unit_scale=True, desc=destination.name, disable=None
                )
            done = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                else:
                    progress(done, total)
            if bar is not None:
                bar.close()
            out.flush()
            os.fsync(out.fileno())
        try:
            verify_checksum(tmp, checksum)
        except ChecksumError as e:
            raise ChecksumError(f"download of {url} discarded: {e}") from None
        os.replace(tmp, destination)
    return destination


def _check_member(archive: pathlib.Path, directory: pathlib.Path, name: str) -> None:
    # zipfile and tarfile's "data" filter would silently rewrite such names
    parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise DatasetFormatError(
            f"{archive}: member {name!r} would be extracted outside {directory}"
        )


def extract(archive: str | os.PathLike, directory: str | os.PathLike, folder: str) -> pathlib.Path:
    """Extract ``archive`` (.tar.gz or .zip), whose top folder is ``folder``, into ``directory``.

    Extraction goes to a temporary folder; ``directory/folder`` appears only when complete.

    Raises:
      DatasetFormatError: a member is an absolute path, contains ``..``, or is a link out of
        the folder; nothing is extracted from such an archive.
    """
    archive, directory = pathlib.Path(archive), pathlib.Path(directory)
    with _temporary(directory, f".{folder}.", folder=True) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    _check_member(archive, directory, name)
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                for name in t.getnames():
                    _check_member(archive, directory, name)
                try:
                    t.extractall(tmp, filter="data")
                except tarfile.FilterError as e:  # e.g. a link pointing outside
                    raise DatasetFormatError(f"{archive}: unsafe member refused: {e}") from e
        if not (tmp / folder).is_dir():
            raise DatasetUnavailableError(f"{archive} does not contain the folder {folder}/")
        os.replace(tmp / folder, directory / folder)
    return directory / folder


def unavailable_message(remote: Remote, root: pathlib.Path, reason: str) -> str:
    return (
        f"{remote.name} not found in {root} ({reason}). Put the official archive "
        f"{remote.filename} (from {remote.url}, {remote.checksum}) or its extracted folder "
        f"{remote.folder}/ into {root}, or point data_dir / ${ENV_VAR} at the folder that holds "
        "one of them."
    )


def _record(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: pathlib.Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _write_record(path: pathlib.Path, record: dict) -> None:
    from diffjax.checkpoint import write_text_atomic  # checkpoint imports this module

    write_text_atomic(_record(path), json.dumps(record, indent=1, sort_keys=True))


def _read_record(path: pathlib.Path) -> dict | None:
    try:
        record = json.loads(_record(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def verify_archive(path: pathlib.Path, remote: Remote) -> None:
    """Check an archive on disk against ``remote.checksum``, hashing it only when it changed
    since it was last verified (``<archive>.verified``).

    Raises:
      ChecksumError: the archive is not the published one; the message says what to do.
    """
    record = _read_record(path)
    if record == {"checksum": remote.checksum, "stamp": _stamp(path)}:
        return
    try:
        verify_checksum(path, remote.checksum)
    except ChecksumError as e:
        raise ChecksumError(
            f"{e}: not the published {remote.name} archive ({remote.url}); delete or replace it"
        ) from None
    _write_record(path, {"checksum": remote.checksum, "stamp": _stamp(path)})


def _folder_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def record_folder(folder: pathlib.Path, remote: Remote) -> None:
    """Record the digests of the files of ``folder``, just extracted from the verified archive."""
    files = {
        name: {"sha256": file_digest(p, "sha256"), "stamp": _stamp(p)}
        for name, p in _folder_files(folder).items()
    }
    _write_record(folder, {"checksum": remote.checksum, "files": files})


def verify_folder(folder: pathlib.Path, remote: Remote) -> None:
    """Check an extracted folder against the digests recorded when diffjax extracted it (a file
    is rehashed only when its size or modification time changed); warn when there is no record.

    Raises:
      ChecksumError: a file is missing, added or changed; the message names it.
    """
    record = _read_record(folder)
    if record is None or record.get("checksum") != remote.checksum:
        warnings.warn(
            f"{folder} was not extracted by diffjax, so it cannot be checked against the "
            f"published {remote.name} archive ({remote.checksum}); its content is used unchecked. "
            f"To have it checked, delete it and put {remote.filename} into {folder.parent}.",
            UnverifiedDatasetWarning,
            stacklevel=3,
        )
        return
    files, want = _folder_files(folder), record.get("files", {})
    for name in sorted(set(files) | set(want)):
        if name not in files or name not in want:
            problem = "is missing" if name not in files else "was added"
        elif _stamp(files[name]) == want[name]["stamp"]:
            continue
        elif file_digest(files[name], "sha256") == want[name]["sha256"]:
            continue
        else:
            problem = "was changed"
        raise ChecksumError(
            f"{folder / name} {problem} since diffjax extracted {remote.filename}: delete "
            f"{folder} to extract or download it again"
        )


def locate(root: pathlib.Path, remote: Remote, download: bool = True) -> pathlib.Path:
    """The extracted folder or archive of ``remote`` under ``root``, downloading it if allowed.

    Looks for ``root/<folder>/`` first, then ``root/<filename>``, and verifies what it finds
    (:func:`verify_folder`, :func:`verify_archive`) whether or not ``download`` is on. A
    download is verified, extracted atomically, its files' digests recorded, and the archive
    deleted.

    Raises:
      DatasetUnavailableError: not on disk, and downloading is off or failed.
      ChecksumError: what is on disk is not the published dataset.
    """
    if (root / remote.folder).is_dir():
        verify_folder(root / remote.folder, remote)
        return root / remote.folder
    if (root / remote.filename).is_file():
        verify_archive(root / remote.filename, remote)
        return root / remote.filename
    if not download:
        raise DatasetUnavailableError(unavailable_message(remote, root, "downloading is off"))
    archive = root / remote.filename
    try:
        fetch(remote.url, archive, remote.checksum)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetUnavailableError(
            unavailable_message(remote, root, f"download failed: {e}")
        ) from e
    folder = extract(archive, root, remote.folder)
    record_folder(folder, remote)
    archive.unlink()
    return folder
