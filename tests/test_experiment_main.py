"""The main job end to end at a tiny size: summary, re-checked attacks, per-layer analysis."""

import numpy as np

from experiments import main as main_job


def test_main_job_runs_and_reports(tmp_path, capsys):
    out = main_job.main(["--epochs", "1", "--attack-examples", "8", "--analysis-examples", "4",
                         "--pgd-steps", "2", "--results", str(tmp_path / "res"), "--runs",
                         str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"),
                         "--quiet"])  # fmt: skip
    assert set(out["models"]) == {"vit", "diffvit"}
    for res in out["models"].values():
        assert 0 <= res["clean_accuracy"] <= 1
        assert [round(a["eps"] * 255) for a in res["pgd"]] == [1, 2, 4, 8]
        for a in res["pgd"]:
            clean, adv = np.array(a["clean_correct"]), np.array(a["adv_correct"])
            assert a["summary"]["fooled"] == np.sum(clean & ~adv.astype(bool))
        assert len(res["layers"]) == main_job.TRAIN.model.depth
    assert "clean accuracy" in capsys.readouterr().out
    assert (tmp_path / "fig" / "main_embedded.png").is_file()
