"""The prepared accelerator script runs on CPU at its tiny size (so it cannot rot): the probe of
both attention paths, then no reproduction (``ACCEL_CHECK_SEEDS`` empty): that stage is the
``diffjax run main`` command line, which ``tests/test_experiment_main.py`` runs already.

Under a minute on an idle 2-core CPU (mostly compilation); the timeout leaves room for a loaded one.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_accelerator_check_probes_both_attention_paths_at_the_tiny_size(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "ACCEL_CHECK_SIZE": "tiny",
           "ACCEL_CHECK_PROBE_S": "2", "ACCEL_CHECK_SEEDS": "", "PYTHON": sys.executable,
           "JAX_PLATFORMS": "cpu"}  # fmt: skip
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "accelerator_check.sh")], env=env,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert {r["attention_impl"] for r in probe["rows"]} == {"reference", "fused"}
    for row in probe["rows"]:
        assert row["train_img_per_s"] > 0 and row["pgd_img_per_s"] > 0
        assert 0 < row["train_mfu"] < 1 and row["train_gflop_per_img"] > 0
    stages = dict(line.split() for line in (tmp_path / "timings.txt").read_text().splitlines())
    assert stages.keys() - {"install"} == {"probe"}
    assert "accelerator_check: done" in done.stdout
