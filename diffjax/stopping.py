"""Stopping on SIGINT / SIGTERM at a safe point, for the command line.

    install()                 # the CLI: Ctrl-C and SIGTERM raise Stopped, not KeyboardInterrupt
    with critical():          # a checkpoint save: a signal arriving inside waits for the end
        ...

A signal raises :class:`Stopped` where the program is, except inside :func:`critical` blocks,
where it is held until the block ends (sealed, or abandoned by its own error). The command line
then exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell
convention. Without :func:`install` (a library user), the default handlers stay and
:func:`critical` changes nothing.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_depth = 0
_pending: int | None = None


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised at a safe point. ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _handler(signum, _frame) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise Stopped(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Stopped` (in the main thread)."""
    for s in SIGNALS:
        signal.signal(s, _handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block that a signal does not interrupt: :class:`Stopped` is raised after it."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)
