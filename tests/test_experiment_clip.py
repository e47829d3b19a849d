"""`diffjax run clip_compare` at its mini config end to end, its resume, and its figure."""

import json

import numpy as np

from diffjax.experiments import configs
from tests.commandline import diffjax


def test_clip_compare_mini_runs_resumes_and_draws(tmp_path):
    args = ["run", "clip_compare", "--config=clip_compare:mini", "--workdir", str(tmp_path)]
    out = diffjax(*args)
    assert set(out["models"]) == {"clip_seed0", "diffclip_seed0"}
    steps = configs.load("clip_compare:mini").training.steps
    for res in out["models"].values():
        assert 0 <= res["zeroshot_accuracy"] <= 1
        assert res["training"]["steps"] == steps
        layers = res["layers"]
        assert len(layers) == 2 and all(0 <= r["negative_alignment"] <= 1 for r in layers)
        assert all(r["sigma_max_mean"] > 0 for r in layers)
        for attack in res["attacks"]:
            s = attack["summary"]
            clean, adv = np.array(attack["clean_correct"]), np.array(attack["adv_correct"])
            assert s["examples"] == 8 and s["clean_correct"] == clean.sum()
            assert s["fooled"] == np.sum(clean & ~adv.astype(bool))
            assert s["mean_linf"] is None or s["mean_linf"] <= attack["eps"] + 1e-5
    saved = json.loads((tmp_path / "results/clip_compare/mini/results.json").read_text())
    assert saved["environment"]["packages"]["jax"]
    # A second run reuses the finished parts: identical numbers, nothing retrained.
    parts = sorted((tmp_path / "results/clip_compare/mini/parts").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in parts]
    again = diffjax(*args)
    assert [p.stat().st_mtime_ns for p in parts] == mtimes
    assert again["models"] == out["models"]
    png, pdf = (tmp_path / f"figures/clip_compare_mini.{ext}" for ext in ("png", "pdf"))
    assert np.fromfile(png, np.uint8)[:4].tolist() == [137, 80, 78, 71]  # PNG magic
    assert pdf.read_bytes()[:5] == b"%PDF-"
