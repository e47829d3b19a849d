"""kill -9 of an experiment (`diffjax run`) mid-training: the rerun resumes the zoo training
from its checkpoint, reuses the finished parts, and writes exactly the results of an
uninterrupted run, on the test session's devices. (Across device counts the data-parallel
gradient sums round differently in the last bit: the training checkpoints' cross-topology
round trips are tests/test_checkpoint_train.py's.)"""

import json
import os
import signal
import subprocess
import sys
import time

import jax

from tests.commandline import diffjax

ARGS = ["run", "lambda_sweep", "--config=lambda_sweep:mini", "--config.lambdas=(0.5,)",
        "--offline"]  # fmt: skip


def _results(workdir):
    saved = json.loads((workdir / "results/lambda_sweep/mini/results.json").read_text())
    del saved["environment"]  # the time stamp and devices of the run
    for runs in saved["runs"].values():
        for part in runs:
            # Throughput, where it ran and whether it resumed differ; the numbers may not.
            for key in ("train_img_per_s", "devices", "resumed_from_step"):
                part["train"].pop(key)
    return saved


def test_a_killed_experiment_resumes_to_the_uninterrupted_results(tmp_path):
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffjax.experiments.cli", ARGS[0], ARGS[1], "--quiet",
           "--no-compilation-cache", *ARGS[2:], "--workdir", str(killed)]  # fmt: skip
    # The same devices as this process (conftest sets them by config, not by environment): a
    # data-parallel step sums its gradients in another order on another device count.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(jax.device_count())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    zoo = killed / "runs" / "zoo" / "synthetic"
    deadline = time.monotonic() + 600
    # The ViT's part is finished and the DiffViT has its first checkpoint: kill -9 there.
    while not any(zoo.glob("diffvit_*/checkpoints/4/manifest.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results/lambda_sweep/mini/results.json").exists()

    diffjax(*ARGS, "--workdir", str(killed))
    diffjax(*ARGS, "--workdir", str(tmp_path / "whole"))
    assert _results(killed) == _results(tmp_path / "whole")
