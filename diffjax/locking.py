"""One writer per directory: an exclusive lock on a run, attack or experiment directory.

    with exclusive(workdir, "run directory"):   # LockedError if another process holds it
        ...

The lock is ``flock`` on ``<directory>/.diffjax.lock``, which records the holder's pid and host.
The kernel releases it when its process ends, however it ends, so the lock of a killed process
is stale at once and the next process takes it over (rewriting the record). A process may take
the lock of one directory again while it holds it (``diffjax train`` locks its workdir, and the
training loop inside locks the run directory, the same one). ``flock`` is per host: on a
network file system shared by several hosts it may not exclude the other hosts' processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
from collections.abc import Iterator

LOCK_FILE = ".diffjax.lock"

# directory -> (open lock file, how many times this process holds it)
_held: dict[pathlib.Path, list] = {}


class LockedError(RuntimeError):
    """A directory that another process is writing; the message names its pid and host."""


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, what: str = "directory") -> Iterator[None]:
    """Hold the lock of ``directory`` (created if missing) for the block.

    Raises:
      LockedError: another live process holds it; names ``what``, the directory, the pid and
        the host of the holder.
    """
    directory = pathlib.Path(directory).absolute()
    if directory in _held:
        _held[directory][1] += 1
    else:
        directory.mkdir(parents=True, exist_ok=True)
        f = open(directory / LOCK_FILE, "a+")  # held open while the lock is held
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            f.close()
            raise LockedError(
                f"{what} {directory} is in use by {holder} (lock {directory / LOCK_FILE}); "
                "wait for it to finish, stop it, or use another directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        f.flush()
        _held[directory] = [f, 1]
    try:
        yield
    finally:
        _held[directory][1] -= 1
        if not _held[directory][1]:
            _held.pop(directory)[0].close()  # closing releases the lock
