"""The main job end to end at its mini size: summary, re-checked attacks, per-layer analysis."""

import numpy as np

from diffjax.experiments import configs
from tests.commandline import diffjax


def test_main_job_runs_and_reports(tmp_path, capsys):
    out = diffjax("run", "main", "--config=main:mini", "--workdir", str(tmp_path))
    depth = configs.load("main").train.model.depth
    assert set(out["models"]) == {"vit", "diffvit"}
    for res in out["models"].values():
        assert 0 <= res["clean_accuracy"] <= 1
        assert [round(a["eps"] * 255) for a in res["pgd"]] == [1, 2, 4, 8]
        for a in res["pgd"]:
            clean, adv = np.array(a["clean_correct"]), np.array(a["adv_correct"])
            assert a["summary"]["fooled"] == np.sum(clean & ~adv.astype(bool))
        assert len(res["layers"]) == depth
    assert "clean accuracy" in capsys.readouterr().out
    assert (tmp_path / "figures" / "main_mini.png").is_file()
    assert (tmp_path / "figures" / "main_mini.pdf").is_file()
