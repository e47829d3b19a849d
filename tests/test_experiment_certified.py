"""`diffjax run certified` at its mini config end to end: three models, every certificate and
rate consistent with its definition, the saved results equal to the returned ones, the figure."""

import json

import numpy as np

from diffjax.experiments import configs
from tests.commandline import diffjax


def test_certified_mini_runs_and_its_numbers_add_up(tmp_path):
    out = diffjax("run", "certified", "--config=certified:mini", "--workdir", str(tmp_path))
    config = configs.load("certified:mini")
    assert set(out["models"]) == {"vit", "diffvit", "diffvit_reg"}
    runs = {m["run"] for m in out["models"].values()}
    assert len(runs) == 3  # the regularised DiffViT is its own zoo model (another config hash)
    for m in out["models"].values():
        assert 0 <= m["clean_accuracy"] <= 1
        assert [a["eps"] for a in m["pgd"]] == list(config.eps)
        layer = m["layers"][0]
        assert 0 <= layer["negative_alignment"] <= 1 and layer["sigma_max_mean"] > 0
        for norm in ("l2", "linf"):
            c = m[f"certified_{norm}"]
            grid = config[f"radii_{norm}"]
            assert len(c["radius"]) == config.certify_examples
            for r, ri, rg, margin in zip(c["radius"], c["by_interval"], c["by_gradient"],
                                         c["margin"], strict=True):  # fmt: skip
                assert r == max(ri, rg) and 0 <= r <= max(grid)
                assert margin > 0 or r == 0  # misclassified: nothing certified
            b = m[f"bisection_{norm}"]  # the verifier's radii by bisection, and their curve
            assert (b["method"], b["steps"]) == (config.verify_method, config.verify_steps)
            assert len(b["radius"]) == config.certify_examples
            assert b["eps"] == [config[f"verify_hi_{norm}"] * (i + 1) / config.curve_points
                                for i in range(config.curve_points)]  # fmt: skip
            radius = np.asarray(b["radius"])
            assert b["certified_accuracy"] == [np.mean(radius >= e) for e in b["eps"]]
            for r, margin in zip(radius, c["margin"], strict=True):
                assert 0 <= r <= config[f"verify_hi_{norm}"] and (margin > 0 or r == 0)
        assert len(m["smoothing"]) == len(config.sigmas)
        for s in m["smoothing"]:
            assert all(r >= 0 for r in s["radius"])
            assert all(r == 0 for r, ok in zip(s["radius"], s["correct"], strict=True) if not ok)
    for row in out["summary"]:
        m = out["models"][row["model"]]
        r = np.asarray(m["certified_l2"]["radius"])
        first = config.report_l2[0]
        assert row[f"certified_l2_{first:g}"] == np.mean(r >= first)
    stats = out["branch_statistics"]["diffvit"]
    np.testing.assert_allclose(
        stats["predicted"],
        np.asarray(stats["gamma"]) * (1 + np.asarray(stats["lam"]) * np.asarray(stats["rho"])),
    )
    saved = json.loads((tmp_path / "results/certified/mini/results.json").read_text())
    assert saved == json.loads(json.dumps(out))
    for ext in ("png", "pdf"):
        assert (tmp_path / f"figures/certified_mini.{ext}").stat().st_size > 0
