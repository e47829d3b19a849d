"""`diffjax run certified` at its mini config end to end: every model of the design, every rate
equal to its definition recomputed from the per-image values saved, Wilson intervals around
the rates, certified ≤ PGD-robust ≤ clean accuracy per model, the saved results equal to the
returned ones, the figure; and the config's bad values refused naming the field."""

import json

import numpy as np
import pytest

from diffjax.attacks.accounting import difference_interval, wilson_interval
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
            # None: not bounded (misclassified, attacked, or not certified at the ε before)
            out[f"certified_{name}"] = rate(clean & np.array([b is not None and b > 0
                                                              for b in bound]))  # fmt: skip
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
        assert m["verify_methods"] == [v for v, top in zip(config.verify_methods,
                                                           config.verify_max_depth, strict=True)
                                       if m["depth"] <= top]  # fmt: skip
        for s in m["seeds"]:
            assert len(s["clean_correct"]) == n
            for norm in ("linf", "l2"):
                assert [a["eps"] for a in s["attacks"][norm]] == list(config[f"eps_{norm}"])
                assert [c["eps"] for c in s["certified"][norm]] == list(config[f"eps_{norm}"])
                before = np.ones(n, bool)  # certified at the ε before
                for a, c in zip(s["attacks"][norm], s["certified"][norm], strict=True):
                    assert a["clean_correct"] == s["clean_correct"]  # one clean pass per model
                    assert len(a["adv_correct"]) == len(c["margin_bound"]) == len(c["method"]) == n
                    bounded = np.array([b is not None for b in c["margin_bound"]])
                    expected = np.asarray(s["clean_correct"], bool) & before & np.asarray(
                        a["adv_correct"], bool)
                    np.testing.assert_array_equal(bounded, expected)
                    before = np.array([b is not None and b > 0 for b in c["margin_bound"]])
                    assert [meth is not None for meth in c["method"]] == before.tolist()
                    assert {meth for meth in c["method"]} <= {None, *m["verify_methods"]}
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
        # Alignment, σmax and λ of every model's first seed (natural, PGD and certified alike)
        assert all("layers" not in s for s in m["seeds"][1:])
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
    # DiffViT − ViT of every pooled rate, per depth and training, with Newcombe's interval.
    by = {(m["depth"], m["training"], m["model"]): m["rates"] for m in out["models"]}
    want = [{"depth": d, "training": t, "rate": name, "vit": v["rate"],
             "diffvit": by[d, t, "diffvit"][name]["rate"],
             "gap": by[d, t, "diffvit"][name]["rate"] - v["rate"],
             "ci95": list(difference_interval(by[d, t, "diffvit"][name]["k"], v["n"], v["k"],
                                              v["n"]))}
            for (d, t, model), rates in by.items() if model == "vit"
            for name, v in rates.items()]  # fmt: skip
    assert out["gaps"] == want
    report = certified.report(out)  # the tables docs/certified.md quotes
    for m in out["models"]:
        name = {"vit": "ViT", "diffvit": "DiffViT"}[m["model"]]
        cells = [f"{m['rates']['clean']['rate']:.3f}", *(f"{r['rate']:.3f}" for k, r in
                                                        m["rates"].items() if k != "clean")]
        row = next(line for line in report.splitlines()
                   if line.startswith(f"| {name} | {m['depth']} | {m['training']} | "))
        assert sorted(row.strip("| ").split(" | ")[3:]) == sorted(cells)
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
    ("eps_l2", (0.25, 0.1), r"eps_l2: must ascend without repeats"),
    ("verify_methods", ("ibp", "interval"), "verify_methods must be one of"),
    ("verify_methods", ("ibp", "ibp"), "verify_methods: must be a non-empty tuple without"),
    ("verify_max_depth", (1,), "verify_max_depth: must give one depth per method"),
    ("verify_max_depth", (1, 0), r"verify_max_depth: must hold integers >= 1"),
    ("depths", (1, 2), "verify_max_depth: leaves depth 2 without a method"),
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


def test_certify_keeps_each_images_best_bound_and_bounds_only_the_open_images():
    """The cascade against the verifier called on all images with each method alone: an image
    is bounded iff correct, not attacked and certified at the ε before; its bound is the first
    method's that is > 0, else the largest; its method, the one that certified it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from diffjax import verify
    from diffjax.analysis import with_dtype
    from diffjax.data.dataset import Dataset
    from diffjax.vit import ViT
    from tests.test_train_certified import MODEL

    model = ViT(MODEL, rngs=nnx.Rngs(3))
    images = np.asarray(jax.random.randint(jax.random.key(4), (7, 8, 8, 3), 0, 256), np.uint8)
    predicted = np.asarray(jnp.argmax(model(jnp.asarray(images, jnp.float32) / 255), -1))
    labels = predicted.copy()
    labels[1] = (labels[1] + 1) % MODEL.num_classes  # misclassified
    clean = labels == predicted
    eps_list = (1e-4, 2e-3, 1e-2, 4e-2)
    rng = np.random.default_rng(0)
    attacked = [{"eps": e, "adv_correct": (rng.random(7) > 0.15).tolist()} for e in eps_list]
    methods = ("ibp", "crown-ibp")
    data = Dataset(images, labels.astype(np.int32), ("a", "b", "c"))
    got = certified.certify(model, data, eps_list, "linf", attacked, methods, clean.tolist())

    with jax.enable_x64(True):
        m = with_dtype(model, "float64")
        x = jnp.asarray(images, jnp.float64) / 255
        others = np.arange(MODEL.num_classes)[None, :] != labels[:, None]
        before = np.ones(7, bool)
        seen = set()
        for eps, attack, out in zip(eps_list, attacked, got, strict=True):
            alone = {name: np.min(np.where(others, np.asarray(verify.margin_lower_bounds(
                m, x, jnp.asarray(labels), eps, "linf", name)), np.inf), axis=1)
                for name in methods}  # fmt: skip
            open_ = clean & before & np.asarray(attack["adv_correct"], bool)
            assert out["eps"] == eps
            for i in range(7):
                if not open_[i]:
                    assert out["margin_bound"][i] is None and out["method"][i] is None
                    continue
                first = alone["ibp"][i]
                want = first if first > 0 else max(first, alone["crown-ibp"][i])
                want_method = "ibp" if first > 0 else ("crown-ibp" if want > 0 else None)
                np.testing.assert_allclose(out["margin_bound"][i], want, rtol=1e-9, atol=1e-12)
                assert out["method"][i] == want_method
                seen.add(want_method)
            before = np.array([b is not None and b > 0 for b in out["margin_bound"]])
    assert seen == {"ibp", "crown-ibp", None}  # every branch of the cascade was taken
