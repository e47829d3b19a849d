"""Two writers on one directory, SIGINT / SIGTERM and a failed save stop cleanly.

One ``diffjax train`` runs in a subprocess per signal; while it holds its run directory, a
second ``diffjax train`` on the same directory (in this process) is refused naming the first
one's pid and host. Each is then stopped by its signal once a checkpoint is sealed: it exits
with 128 + the signal number, its last stderr line says so, no traceback is printed and no
temporary checkpoint is left; the same command then resumes it. The outcomes feed the fault
table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from diffjax import locking, stopping
from diffjax.checkpoint import ORBAX_TMP_MARK
from diffjax.train import METRICS_FILE, _truncate_metrics
from tests.commandline import diffjax, diffjax_error
from tests.fault_table import Outcomes, table_fixture

outcome = Outcomes()
fault_table = table_fixture(outcome, "test_stopping")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 25 epochs of 4 steps: still running when it is stopped after its first checkpoint
TRAIN = ["train", "--config=train:mini", "--config.train.epochs=25", "--offline"]


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from diffjax.locking import exclusive\n"
         "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
         str(tmp_path)],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(locking.LockedError, match=f"pid {holder.pid} on host "):
        with locking.exclusive(tmp_path, "run directory"):
            pass
    holder.kill()
    holder.wait()
    with locking.exclusive(tmp_path), locking.exclusive(tmp_path):  # re-entrant in a process
        record = (tmp_path / locking.LOCK_FILE).read_text()
        assert record == f"pid {os.getpid()} on host {socket.gethostname()}\n"
    outcome("stale lock of a killed process", recovered=True)


def test_resume_drops_repeated_and_out_of_order_metric_records(tmp_path):
    lines = [{"kind": "train", "step": s} for s in (4, 8)] + [{"kind": "eval", "step": 8}]
    doubled = [r for r in lines for _ in range(2)]  # two writers, each record twice
    doubled += [{"kind": "train", "step": 4}, {"kind": "train", "step": 12}, 7, {"step": "x"}]
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in doubled) + '{"kind": "tr')
    _truncate_metrics(path, 8)
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines
    outcome("repeated metric records on resume", recovered=True)


def _wait_for(path: pathlib.Path, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def small_disk(tmp_path):
    """A 200 kB tmpfs: room for config.json and the metrics, not for a checkpoint (needs root);
    None where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True
    )
    yield None if done.returncode else mount
    if not done.returncode:
        subprocess.run(["umount", str(mount)], check=True)


def _train(workdir: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "diffjax.experiments.cli", *TRAIN, "--quiet",
         "--no-compilation-cache", "--workdir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )  # fmt: skip


def _stderr(p: subprocess.Popen, tracebacks: bool = False) -> str:
    """The last line ``p`` wrote to stderr; nothing but that line may follow a traceback (with
    ``tracebacks``: tensorstore's threads may print "Event loop is closed" during a failed
    save, through no hook the command line can filter), and none may appear otherwise."""
    stderr = p.communicate(timeout=300)[1].decode()
    lines = stderr.strip().splitlines()
    if tracebacks:
        closed = [i for i, line in enumerate(lines) if line == "RuntimeError: Event loop is closed"]
        lines = lines[closed[-1] + 1 :] if closed else lines
    tail = "\n".join(lines)
    assert "Traceback" not in tail and "Task exception" not in tail, stderr
    return lines[-1]


def test_signals_and_a_full_disk_stop_training_cleanly(tmp_path, small_disk, capsys):
    signals = (signal.SIGTERM, signal.SIGINT)
    procs = {s: _train(tmp_path / s.name) for s in signals}
    full = None if small_disk is None else _train(small_disk / "run")
    for s in signals:
        _wait_for(tmp_path / s.name / "checkpoints" / "4" / "manifest.json", list(procs.values()))

    # A second writer while the first holds the run directory: refused, naming the holder.
    err = diffjax_error(capsys, *TRAIN, "--workdir", str(tmp_path / "SIGTERM"))
    assert f"pid {procs[signal.SIGTERM].pid} on host {socket.gethostname()}" in err
    assert err.count("\n") == 1
    outcome("second writer on a run directory", recovered=False)

    for s, p in procs.items():
        p.send_signal(s)
    for s, p in procs.items():
        assert _stderr(p).startswith(f"diffjax: stopped by {s.name}")
        assert p.returncode == 128 + s
        checkpoints = tmp_path / s.name / "checkpoints"
        assert not [p for p in checkpoints.iterdir() if ORBAX_TMP_MARK in p.name]
        assert all((step / "manifest.json").is_file() for step in checkpoints.iterdir())
    if full is not None:  # the first save fails: one line, status 2
        assert _stderr(full, tracebacks=True).startswith("diffjax train: error: saving checkpoint")
        assert full.returncode == 2
        outcome("full disk during a checkpoint save (command line)", recovered=False)

    # The same command resumes the SIGTERM run from its last sealed step.
    summary = diffjax(*TRAIN, "--workdir", str(tmp_path / "SIGTERM"))
    assert summary["resumed_from_step"] >= 4
    records = [
        json.loads(line) for line in (tmp_path / "SIGTERM" / METRICS_FILE).read_text().splitlines()
    ]
    keys = [(r["kind"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) and keys == sorted(keys, key=lambda k: k[1])
    # a clean stop, told in one line: "clear error" (bit-exact resumes: the kill -9 tests)
    outcome("SIGTERM during training (exit 143), then resumed", recovered=False)
    outcome("SIGINT during training (exit 130)", recovered=False)


def test_a_signal_inside_a_critical_block_waits_for_its_end():
    previous = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    stopping.install()
    try:
        done = []
        with pytest.raises(stopping.Stopped) as e:
            with stopping.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                done.append(True)  # reached: the signal waited
        assert done and e.value.exit_code == 143
        with pytest.raises(stopping.Stopped, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
