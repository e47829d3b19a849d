"""The auto_LiRPA benchmark's pieces: the torch twin, the bisection, the table, and soundness.

The twin, bisection and table tests need no auto_LiRPA; the soundness comparison is skipped
without it (it is not a dependency: benchmarks/verify_lirpa.py says how to install it).
"""

import importlib.util
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from benchmarks import verify_lirpa as V
from diffjax.analysis import certified as C
from tests.analysis_models import tiny

torch = pytest.importorskip("torch")
from benchmarks.torch_reference import MODELLED, from_diffjax  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_LIRPA = importlib.util.find_spec("auto_LiRPA") is not None


def _images(n, seed=1):
    return np.asarray(jax.random.uniform(jax.random.key(seed), (n, 8, 8, 3), jnp.float64))


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_torch_twin_equals_diffjax_in_float64(attention):
    with jax.enable_x64(True):
        model = tiny(attention, lambda_init="schedule")
        x = _images(4)
        z = np.asarray(model(x))
        with torch.no_grad():
            ref = from_diffjax(model).double()(torch.from_numpy(x)).numpy()
    assert np.abs(z).max() > 0.1  # not a degenerate model
    np.testing.assert_allclose(ref, z, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "switch",
    [
        ("activation", "quick_gelu"),
        ("ln_pre", True),
        ("patch_bias", False),
        ("pool", "mean"),
        ("distillation", True),
    ],  # fmt: skip
)
def test_torch_twin_refuses_what_it_does_not_implement(switch):
    assert switch[0] in MODELLED
    model = dj.ViT(dj.preset("tiny", depth=1, **dict([switch])), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=switch[0]):
        from_diffjax(model)


def test_bisect_reaches_the_largest_grid_point_below_each_threshold():
    rng = np.random.default_rng(0)
    hi, steps = 0.05, 9
    t = np.concatenate([rng.uniform(0, hi, 20), [0.0, hi / 2**steps * 7, hi, 2 * hi, -1.0]])
    calls = []

    def certified(eps):
        calls.append(eps.copy())
        return eps <= t

    r = V.bisect(certified, len(t), hi, steps)
    h = hi / 2**steps
    # In closed form: the largest multiple of h that is ≤ t below hi; hi where t ≥ hi; 0 where
    # not even ε = 0 is certified.
    expected = np.where(t >= hi, hi, np.floor(t / h) * h)
    np.testing.assert_allclose(r, np.where(t < 0, 0.0, expected), rtol=1e-12, atol=0)
    assert len(calls) == steps + 2 and all(c.shape == t.shape for c in calls)


def test_bisect_is_verify_certified_radius_bisection():
    """The harness's bisection over verify's margin bounds gives verify's own radii."""
    from diffjax import verify

    with jax.enable_x64(True):
        model = tiny("softmax", depth=1)
        x = _images(3, seed=5)
        labels = np.asarray(model(x)).argmax(-1).astype(np.int32)
        labels[2] = (labels[2] + 1) % 10  # a misclassified image certifies 0
        hi, steps = 0.01, 6
        theirs = np.asarray(verify.certified_radius(model, x, labels, "linf", "crown-ibp",
                                                    hi=hi, steps=steps))  # fmt: skip

        def certified(eps):
            low = np.asarray(verify.margin_lower_bounds(model, x, labels, eps, "linf", "crown-ibp"))
            others = np.arange(10)[None] != labels[:, None]
            return np.all(np.where(others, low > 0, True), axis=1)

        ours = V.bisect(certified, len(x), hi, steps)
    assert ours[2] == 0 and ours[:2].min() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def _fake_result(attention, depth, norm, methods):
    return {"attention": attention, "depth": depth, "norm": norm, "images": [3, 5, 8],
            "labels": [1, 2, 3], "hi": 0.05, "steps": 10, "methods": methods}  # fmt: skip


def test_render_ratios_against_auto_lirpas_best_method():
    def m(radii, warm):
        return {"radii": radii, "cold_s": 9.0, "warm_s": warm, "error": None}

    result = _fake_result("diff", 2, "l2", {
        "auto_LiRPA IBP": m([0.0, 0.0, 0.0], 0.5),
        "auto_LiRPA CROWN": {**m([1e-3, 2e-3, 4e-3], 20.0), "failed_calls": 4},
        "auto_LiRPA alpha-CROWN": {"error": "AssertionError: sqrt"},
        "diffjax crown": m([2e-3, 2e-3, 2e-3], 0.5),
    })  # fmt: skip
    assert V.lirpa_best(result) == "CROWN"
    table = V.render([result])
    row = next(line for line in table.splitlines() if line.startswith("| DiffViT depth 2 | l2 | 3"))
    # diffjax ÷ CROWN per image: 2, 1, 0.5; auto_LiRPA's warm time ÷ diffjax's: 40.
    assert row.endswith("| CROWN | 1 [0.5, 2], 40 |")
    assert "fails" in table
    # The (image, ε) bounds auto_LiRPA could not compute are counted beside its time.
    assert "(9 / 20 s, 4 bounds failed)" in table


def _saved():
    return V.load_results(ROOT / V.DEFAULT_OUT)


def test_saved_results_reproduce_the_tables_numbers():
    results = _saved()
    if not results:
        pytest.skip("no saved benchmark results")
    table = V.render(results).splitlines()
    for r in results:
        model = f"{V.MODEL_NAMES[r['attention']]} depth {r['depth']}"
        best = V.lirpa_best(r)
        first = next(line for line in table if line.startswith(f"| {model} | {r['norm']} |"))
        for name, e in r["methods"].items():
            if not name.startswith("diffjax ") or e.get("error") or best is None:
                continue
            b = r["methods"][f"auto_LiRPA {best}"]
            ratios = [a / c for a, c in zip(e["radii"], b["radii"], strict=True) if c > 0]
            if ratios:
                med = f"{statistics.median(ratios):.3g} [{min(ratios):.3g}, {max(ratios):.3g}]"
                assert f"{med}, {b['warm_s'] / e['warm_s']:.3g}" in first, (model, name)
        for e in r["methods"].values():
            assert e.get("error") is not None or len(e["radii"]) == len(r["images"])
        assert r["twin_max_abs_diff"] <= V.TWIN_TOLERANCE


def test_docs_table_is_the_renderers_output():
    results = _saved()
    if not results:
        pytest.skip("no saved benchmark results")
    doc = (ROOT / "docs" / "certified.md").read_text()
    start, end = (doc.find(m) for m in V.MARKERS)
    assert 0 <= start < end, "docs/certified.md lacks the generated auto_LiRPA table"
    assert doc[start + len(V.MARKERS[0]) : end] == V.render(results)


def _adversarial_min(model, x, label, eps, restarts=8, steps=60):
    """The smallest margin z_c − z_j per class j a sign-gradient PGD finds in B∞(x, eps) ∩ box."""

    def margin(v, j):
        z = model(v[None])[0]
        return z[label] - z[j]

    grad = jax.grad(margin)

    def attack(j, key):
        v = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), 0, 1)

        def step(i, v):
            v = v - eps / 8 * jnp.sign(grad(v, j))
            return jnp.clip(jnp.clip(v, x - eps, x + eps), 0, 1)

        return margin(jax.lax.fori_loop(0, steps, step, v), j)

    keys = jax.random.split(jax.random.key(7), restarts)
    js = jnp.arange(10)
    found = jax.jit(jax.vmap(lambda j: jax.vmap(lambda k: attack(j, k))(keys).min()))(js)
    return np.asarray(found)


@pytest.mark.skipif(not HAS_LIRPA, reason="auto_LiRPA is not installed (not a dependency)")
def test_auto_lirpa_and_diffjax_bounds_are_both_sound():
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    from diffjax import verify

    torch.set_default_dtype(torch.float64)
    # Small enough that auto_LiRPA's CROWN keeps the RMSNorm's sqrt input positive (at 1e-2 it
    # stops on its own assertion there).
    eps = 1e-3
    with jax.enable_x64(True):
        model = tiny("diff", depth=1)
        x = _images(1, seed=3)
        label = int(np.asarray(model(x)).argmax())
        adv = _adversarial_min(model, x[0], label, eps)
        program = C.logits_program(model, label)
        interval = np.asarray(program(C.Ball(x[0], eps, "linf"), jnp.zeros_like(x[0]))[0].lo)
        ours = np.asarray(verify.margin_lower_bounds(model, x, np.array([label]), eps, "linf"))[0]
        xt = torch.from_numpy(x)
        bounded = BoundedModule(V.twin(model), xt, device="cpu")
        lo, up = (xt - eps).clamp(0, 1), (xt + eps).clamp(0, 1)
        box = PerturbationLpNorm(norm=np.inf, x_L=lo, x_U=up)
        spec = V.margin_spec(torch.tensor([label]), 10)
        lirpa, _ = bounded.compute_bounds(
            x=(BoundedTensor(xt, box),), C=spec, method="CROWN", bound_upper=False
        )
    others = np.arange(10) != label
    lirpa = lirpa.detach().numpy()[0]  # the margins in spec order, j ≠ c ascending
    assert np.all(adv[others] > 0)  # the attack flips nothing: every bound below is informative
    for bound in (lirpa, ours[others], interval[others]):
        assert np.all(bound <= adv[others] + 1e-9)
    # Both CROWNs are real bounds, far tighter than the interval one on this model.
    for bound in (lirpa, ours[others]):
        assert np.all(np.isfinite(bound)) and np.all(bound > interval[others])
