"""Result records for experiments: provenance, atomic JSON/CSV, resumable parts, statistics.

env = environment()                                   # versions, devices, time
part = cached(path, lambda: expensive())              # computed once; reread after a restart
summary = mean_std_ci([0.81, 0.84, 0.80])             # mean, std, 95 % t-interval
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import importlib.metadata
import io
import json
import math
import os
import pathlib
import platform
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
import scipy.stats

from diffjax.checkpoint import write_text_atomic

PACKAGES = ("diffjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
            "ml-collections")  # fmt: skip


def environment() -> dict[str, Any]:
    """Package versions, devices and time of this process, for a result's provenance."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def read_json(path: str | os.PathLike) -> Any:
    """Load JSON, with an error that names the file when it is missing or corrupt."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt result file {path}: {e}") from e


# A part file is JSON holding its value's text and that text's sha256; the digest covers the
# exact bytes, so any flipped bit or truncation is detected (a re-serialised value would miss a
# flip such as 1e5 -> 1E5).
_PART = re.compile(r'\{"sha256": "([0-9a-f]{64})", "value": (.*)\}\n', re.DOTALL)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_part(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as a part file (JSON with the sha256 of its value's text), atomically."""
    body = json.dumps(value, indent=2, sort_keys=True)
    write_text_atomic(path, f'{{"sha256": "{_sha256(body)}", "value": {body}}}\n')


def read_part(path: str | os.PathLike) -> Any:
    """The value of a part file, after checking its digest.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is truncated, corrupt, has no digest or a different one; the
        message names the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as e:
        raise ValueError(f"corrupt result file {path}: not UTF-8 text ({e})") from e
    match = _PART.fullmatch(text)
    if match is None:
        raise ValueError(
            f"corrupt result file {path}: not a part file with a sha256 digest (truncated, "
            "edited, or written before diffjax sealed its parts); delete it to recompute"
        )
    digest, body = match.groups()
    if _sha256(body) != digest:
        raise ValueError(f"corrupt result file {path}: its value does not match its sha256")
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:  # only reachable with a forged digest
        raise ValueError(f"corrupt result file {path}: {e}") from e


def _canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def seal(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` with a ``"sha256"`` entry: the digest of its canonical JSON (sorted keys, no
    spaces), for a results file that stays plain JSON and is read back by :func:`unseal`."""
    return {**value, "sha256": _sha256(_canonical(value))}


def unseal(value: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The sealed ``value`` read from ``path`` without its digest, after checking it. The
    digest covers the parsed values, so any edit that changes a number, a flag or a key fails.

    Raises:
      ValueError: not a JSON object, no digest, or a different one; the message names the file.
    """
    if not isinstance(value, dict) or "sha256" not in value:
        raise ValueError(f"corrupt result file {path}: no sha256 seal (edited or not diffjax's)")
    rest = {k: v for k, v in value.items() if k != "sha256"}
    if _sha256(_canonical(rest)) != value["sha256"]:
        raise ValueError(f"corrupt result file {path}: its content does not match its sha256")
    return rest


def cached(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """The part at ``path`` if an earlier run finished it; else ``compute()``, saved atomically.

    This is how experiments resume: each finished part is a file (:func:`write_part`), and a
    restarted run only computes the parts whose files are missing. A part that exists but
    fails its digest raises ValueError naming it; it is never recomputed or used silently.
    """
    path = pathlib.Path(path)
    if path.is_file():
        return read_part(path)
    write_part(path, compute())
    return read_part(path)


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write dict rows as CSV (columns in first-seen order) via a temporary file and a rename."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def mean_std_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1) and the Student-t confidence half-width.

    With one value, std and the half-width are NaN (unknown), never 0.
    """
    x = np.asarray(list(values), np.float64)
    if x.size == 0:
        raise ValueError("mean_std_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite values {x.tolist()}")
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "ci": math.nan, "n": 1}
    std = float(x.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci": half, "n": n}


def scalars(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Every number of ``record`` (nested dicts and lists included) as ``(name, value)``;
    nested names are joined by ``/`` (``{"lambda": [0.8, 0.7]}`` → ``lambda/0``, ``lambda/1``).
    Booleans, strings and ``None`` are not numbers here."""
    out = []
    items = record.items() if isinstance(record, Mapping) else enumerate(record)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, Mapping | list | tuple):
            out += scalars(value, f"{name}/")
        elif isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_):
            out.append((name, float(value)))
    return out


class EventLog:
    """TensorBoard event files in ``logdir``, beside the run's JSON records.

        events = EventLog(workdir)
        events.write({"kind": "train", "step": 20, "loss": 1.93, "lambda": [0.8, 0.7]})
        # scalars train/loss, train/lambda/0, train/lambda/1 at step 20

    Watch a run, or every run below a folder, with ``tensorboard --logdir WORKDIR``. Written
    through tensorboardX (no TensorFlow), flushed after every record, so the files are
    complete while the run goes on; closed when the log is garbage-collected.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = pathlib.Path(logdir)
        self._writer = None

    def write(self, record: Mapping[str, Any], *, tag: str | None = None,
              step: int | None = None) -> None:  # fmt: skip
        """Every number of ``record`` as the scalar ``TAG/NAME`` at ``step``.

        Args:
          record: a metrics record; its ``kind`` and ``step`` fields are the defaults of
            ``tag`` and ``step`` and are not written themselves.
          tag: the scalars' prefix (default: ``record["kind"]``).
          step: the x value (default: ``record["step"]``, else 0).
        """
        if self._writer is None:
            from tensorboardX import SummaryWriter  # imported with the first record only

            self._writer = SummaryWriter(str(self.logdir))
            weakref.finalize(self, self._writer.close)
        tag = tag or record.get("kind", "summary")
        step = record.get("step", 0) if step is None else step
        fields = {k: v for k, v in record.items() if k not in ("kind", "step")}
        for name, value in scalars(fields):
            self._writer.add_scalar(f"{tag}/{name}", value, int(step))
        self._writer.flush()
