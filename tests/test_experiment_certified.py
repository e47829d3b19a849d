"""`diffjax run certified` at its mini config end to end: every model of the design, every rate
equal to its definition recomputed from the per-image values saved, Wilson intervals around
the rates, certified ≤ PGD-robust ≤ clean accuracy per model, the saved results equal to the
returned ones, the figure; and the config's bad values refused naming the field."""

import json

import numpy as np
import pytest

from diffjax.attacks.accounting import wilson_interval
from diffjax.experiments import certified, configs
from tests.commandline import diffjax


def rate(flags) -> dict:
    flags = np.asarray(flags, int)
    return {"k": int(flags.sum()), "n": flags.size, "rate": flags.sum() / flags.size,
            "ci95": list(wilson_interval(int(flags.sum()), flags.size))}  # fmt: skip


def expected_rates(per_seed: list[dict], config) -> dict:
    """The rates of the models of ``per_seed``, from their per-image values (images pooled)."""
    cat = lambda get: np.concatenate([np.asarray(get(m)) for m in per_seed])  # noqa: E731
    clean = cat(lambda m: m["clean_correct"]).astype(bool)
    out = {"clean": rate(clean)}
    for norm, unit in (("linf", 255), ("l2", 1)):
        for i, eps in enumerate(config[f"eps_{norm}"]):
            name = f"{norm}_{eps * unit:g}"
            out[f"pgd_{name}"] = rate(cat(lambda m, n=norm, i=i: m["attacks"][n][i]["adv_correct"]))
            bound = cat(lambda m, n=norm, i=i: m["certified"][n][i]["margin_bound"])
            out[f"certified_{name}"] = rate(clean & (bound > 0))  # misclassified: not certified
    return out


def test_certified_mini_runs_and_its_numbers_add_up(tmp_path):
    returned = diffjax("run", "certified", "--config=certified:mini", "--workdir", str(tmp_path))
    out = json.loads(json.dumps(returned))  # intervals as lists, as saved
    config = configs.load("certified:mini")
    designed = {(d, m, t) for d in config.depths for m in ("vit", "diffvit")
                for t in config.trainings}  # fmt: skip
    assert {(m["depth"], m["model"], m["training"]) for m in out["models"]} == designed
    runs = {s["run"] for m in out["models"] for s in m["seeds"]}
    assert len(runs) == len(designed) * len(config.seeds)  # each its own zoo model
    n = config.examples
    for m in out["models"]:
        assert [s["seed"] for s in m["seeds"]] == list(config.seeds)
        for s in m["seeds"]:
            assert len(s["clean_correct"]) == n
            for norm in ("linf", "l2"):
                assert [a["eps"] for a in s["attacks"][norm]] == list(config[f"eps_{norm}"])
                assert [c["eps"] for c in s["certified"][norm]] == list(config[f"eps_{norm}"])
                for a, c in zip(s["attacks"][norm], s["certified"][norm], strict=True):
                    assert a["clean_correct"] == s["clean_correct"]  # one clean pass per model
                    assert len(a["adv_correct"]) == len(c["margin_bound"]) == n
            assert s["rates"] == expected_rates([s], config)
        assert m["rates"] == expected_rates(m["seeds"], config)
        for name, r in m["rates"].items():
            lo, hi = r["ci95"]
            assert lo <= r["rate"] <= hi and (lo, hi) != (0, 1), name
        for s in [*m["seeds"], m]:
            r = s["rates"]
            for norm, unit in (("linf", 255), ("l2", 1)):
                for eps in config[f"eps_{norm}"]:
                    name = f"{norm}_{eps * unit:g}"
                    # The certificate is a lower bound of the robust accuracy, the attack an
                    # upper bound: on the same images, certified ⊆ not fooled ⊆ correct.
                    assert r[f"certified_{name}"]["k"] <= r[f"pgd_{name}"]["k"] <= r["clean"]["k"]
        if m["training"] in ("ibp", "crown-ibp"):
            layers = m["seeds"][0]["layers"]
            assert len(layers) == m["depth"]
            for layer in layers:
                cos = np.asarray(layer["cos"])
                assert layer["negative_alignment"] == pytest.approx(np.mean(cos < 0))
                assert layer["sigma_max_mean"] == pytest.approx(np.mean(layer["sigma"]))
                assert (layer["lambda"] is not None) == (m["model"] == "diffvit")
        if m["training"] == "none":
            assert [s["sigma"] for s in m["smoothing"]] == list(config.sigmas)
            for s in m["smoothing"]:
                radius = np.asarray(s["radius"])
                assert len(radius) == config.smoothing_examples
                assert np.all(radius >= 0) and np.all(radius[~np.asarray(s["correct"], bool)] == 0)
                assert s["rates"]["clean"] == rate(s["correct"])
                for eps in config.eps_l2:
                    assert s["rates"][f"l2_{eps:g}"] == rate(radius >= eps)
        else:
            assert "smoothing" not in m
    for row, m in zip(out["summary"], out["models"], strict=True):
        assert (row["model"], row["depth"], row["training"]) == (m["model"], m["depth"],
                                                                 m["training"])  # fmt: skip
        for name, r in m["rates"].items():
            assert [row[name], row[f"{name}_lo"], row[f"{name}_hi"]] == [r["rate"], *r["ci95"]]
    saved = json.loads((tmp_path / "results/certified/mini/results.json").read_text())
    assert saved == out
    for ext in ("png", "pdf"):
        assert (tmp_path / f"figures/certified_mini.{ext}").stat().st_size > 0


@pytest.mark.parametrize("field, value, message", [
    ("depths", (1, 0), "depths: must hold integers >= 1"),
    ("depths", (), "depths: must not be empty"),
    ("trainings", ("none", "trades"), "trainings: must be a non-empty tuple"),
    ("eps_l2", (0.1, -0.25), "eps_l2: must be a non-empty tuple of radii > 0"),
    ("eps_linf", (1 / 255, 2), r"eps_linf: eps = 2 \(linf\) is above 1"),
    ("sigmas", (0.25, 0.0), "sigmas: sigmas must be"),
    ("pgd_steps", 0, "pgd_steps: pgd_steps must be a positive integer"),
    ("verify_method", "interval", "verify_method must be one of"),
    ("autoattack_examples", 9, "autoattack_examples: 9 exceeds examples"),
])  # fmt: skip
def test_a_bad_config_value_is_refused_naming_its_field(field, value, message):
    config = configs.load("certified:mini")
    with config.unlocked():
        config[field] = value
    with pytest.raises(configs.ConfigError, match=message):
        certified.check(config)


def test_every_model_is_the_per_layer_friendly_architecture_whatever_the_recipe():
    config = configs.load("certified:mini")
    with config.unlocked():
        config.train.model.scan_layers = True  # the verifier traces the per-layer layout
        config.trainings = ("none", "pgd", "ibp", "crown-ibp")
    certified.check(config)
    models = {t: certified.recipe(config, t).model for t in config.trainings}
    for t, m in models.items():
        assert (m.scan_layers, m.remat, m.activation, m.norm, m.pool) == (
            False,
            False,
            "relu",
            "batchnorm",
            "mean",
        ), t
        # natural, PGD and certified models differ in training only
        assert m == models["none"]
    with config.unlocked():
        config.friendly = False
    assert certified.recipe(config, "none").model.activation == config.train.model.activation
