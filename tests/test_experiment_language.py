"""`diffjax run language` at its mini config end to end: both LMs trained, matched in size,
every attack's numbers consistent with its counts and no unconfirmed success, one analysis row per
layer, the saved results equal to the returned ones, and the figure drawn."""

import json

import numpy as np

from diffjax.experiments import configs
from tests.commandline import diffjax


def test_language_mini_runs_and_its_numbers_add_up(tmp_path):
    out = diffjax("run", "language", "--config=language:mini", "--workdir", str(tmp_path))
    config = configs.load("language:mini")
    assert set(out["models"]) == {"transformer", "diff_transformer"}
    params = [m["params"] for m in out["models"].values()]
    assert abs(params[0] - params[1]) / max(params) < 0.01  # parameter-matched (twice the heads)
    attacks = {"pgd_l2_token", "pgd_l2_sequence", "pgd_linf", "hotflip", "gcg_targeted"}
    for model in out["models"].values():
        assert np.isfinite(model["clean"]["val_loss"])
        assert {a["attack"] for a in model["attacks"]} == attacks
        for a in model["attacks"]:
            assert a["examples"] == config.examples and a["claimed_not_rechecked"] == 0
            assert 0 <= a["fooled"] <= a["clean_correct"] <= a["examples"]
            if a["clean_correct"]:
                assert a["asr"] == a["fooled"] / a["clean_correct"]
            if a["attack"] == "pgd_linf" and a["mean_linf"] is not None:
                assert a["mean_linf"] <= a["eps"] * (1 + 1e-5)
        layers = model["layers"]
        assert [r["layer"] for r in layers] == list(range(config.lm_train.model.depth))
        assert all(0 <= r["negative_alignment"] <= 1 and r["sigma_max_mean"] > 0 for r in layers)
    saved = json.loads((tmp_path / "results/language/mini/results.json").read_text())
    assert saved == json.loads(json.dumps(out))
    for ext in ("png", "pdf"):
        assert (tmp_path / f"figures/language_mini.{ext}").stat().st_size > 0
