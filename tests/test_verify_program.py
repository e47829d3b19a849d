"""diffjax.verify's tracing: a hand-computed CROWN reference on a small ReLU network, the
softmax recogniser, refusals naming the primitive, every ViTConfig switch (handled and sound, or
refused), and the API's input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import verify
from diffjax.analysis import with_dtype
from diffjax.verify import engine, ops
from diffjax.verify.program import trace


def _numpy_crown(w1, b1, w2, b2, lo, hi, spec):
    """CROWN for spec·(W2 relu(W1 x + b1) + b2) over the box [lo, hi], written out."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    h_mid, h_rad = w1 @ mid + b1, np.abs(w1) @ rad
    lh, uh = h_mid - h_rad, h_mid + h_rad
    active, dead = lh >= 0, uh <= 0
    width = np.where(active | dead, 1.0, uh - lh)
    up_slope = np.where(active, 1.0, np.where(dead, 0.0, uh / width))
    up_icpt = np.where(active | dead, 0.0, -uh * lh / width)
    low_slope = np.where(active, 1.0, np.where(dead, 0.0, (uh >= -lh).astype(float)))
    lam = spec @ w2
    coeff = np.maximum(lam, 0) * low_slope + np.minimum(lam, 0) * up_slope
    bias = spec @ b2 + np.minimum(lam, 0) @ up_icpt + coeff @ b1
    a = coeff @ w1
    return np.maximum(a, 0) @ lo + np.minimum(a, 0) @ hi + bias


def test_crown_matches_a_hand_computed_reference_on_a_relu_network():
    rng = np.random.default_rng(0)
    with jax.enable_x64():
        w1, b1 = rng.normal(size=(12, 6)), rng.normal(size=12) * 0.5
        w2, b2 = rng.normal(size=(4, 12)), rng.normal(size=4)

        def f(x):
            return jnp.asarray(w2) @ jax.nn.relu(jnp.asarray(w1) @ x + b1) + b2

        prog = trace(f, jnp.zeros(6))
        for trial in range(5):
            x0, eps, label = rng.uniform(0, 1, 6), 0.05 * (trial + 1), trial % 4
            got = engine.margin_bounds(prog, engine.input_set(jnp.asarray(x0), eps, "linf"),
                                       label, "crown", 0.0)  # fmt: skip
            box = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
            spec = np.eye(4)[label][None] - np.eye(4)
            want = _numpy_crown(w1, b1, w2, b2, *box, spec)
            want[label] = 0.0
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9)


def test_softmax_is_recognised_and_bounded_in_the_direct_form():
    with jax.enable_x64():
        w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)))
        prog = trace(lambda x: jax.nn.softmax(6.0 * (w @ x)), jnp.zeros(4))
        kinds = [type(n.op) for n in prog.nodes]
        assert ops.SumExpDiff in kinds and ops.Reciprocal in kinds and prog.pairdiff
        x0 = jnp.asarray([0.2, 0.5, 0.7, 0.4])
        s = engine.input_set(x0, 0.05, "linf")
        lo, hi = engine.intermediate_bounds(prog, s, "crown", 0.0)[prog.output]
        pts = x0 + jax.random.uniform(jax.random.key(0), (500, 4), minval=-0.05, maxval=0.05)
        vals = jax.vmap(lambda x: jax.nn.softmax(6.0 * (w @ x)))(pts)
        assert np.all(vals >= lo) and np.all(vals <= hi)
        assert np.all(hi - lo < 0.9)  # far from the trivial [0, 1]


@pytest.mark.parametrize(
    "fn, prim",
    [
        (jnp.cumsum, "cumsum"),
        (lambda x: jnp.sort(x), "sort"),
        (lambda x: x * jnp.max(x), "reduce_max"),
    ],
)
def test_unmodelled_primitives_are_refused_by_name(fn, prim):
    with jax.enable_x64(), pytest.raises(ValueError, match=f"primitive '{prim}'"):
        trace(fn, jnp.zeros(4))


# One non-default value per ViTConfig field; the test fails when a field is added without one.
SWITCHES = {
    "image_size": dict(image_size=4),
    "patch_size": dict(patch_size=2),
    "channels": dict(channels=1, mean=(0.5,), std=(0.25,)),
    "num_classes": dict(num_classes=3),
    "width": dict(width=8),
    "depth": dict(depth=2),
    "num_heads": dict(num_heads=2),
    "mlp_ratio": dict(mlp_ratio=1.0),
    "attention": dict(attention="diff"),
    "diff_layers": dict(attention="diff", depth=2, diff_layers=(1,)),
    "lambda_init": dict(attention="diff", lambda_init="schedule"),
    "qkv_bias": dict(qkv_bias=False),
    "layer_norm_eps": dict(layer_norm_eps=1e-3),
    "dropout": dict(dropout=0.1),
    "mean": dict(mean=(0.5, 0.4, 0.3)),
    "std": dict(std=(0.3, 0.2, 0.1)),
    "dtype": dict(dtype="float32"),
    "attention_impl": dict(dtype="float32", attention_impl="fused_xla"),
    "scan_layers": dict(scan_layers=True),
    "remat": dict(remat=True),
    "activation": dict(activation="quick_gelu"),
    "ln_pre": dict(ln_pre=True),
    "patch_bias": dict(patch_bias=False),
    "pool": dict(pool="mean"),
    "distillation": dict(distillation=True),
    "class_token": dict(class_token=False, pool="mean"),
    "num_registers": dict(num_registers=1),
    "pos_embed_prefix": dict(pos_embed_prefix=False),
    "layer_scale": dict(layer_scale=True),
    "qk_norm": dict(qk_norm=True),
    "proj_bias": dict(proj_bias=False),
    "mlp_gate": dict(mlp_gate=True, activation="silu"),
    "norm": dict(norm="batchnorm"),
    "rope_base": dict(rope_base=100.0),
    "rope_ref_grid": dict(rope_base=100.0, rope_ref_grid=4),
    "mlp_norm": dict(mlp_norm=True),
}
EXTRA = {"activation=gelu_tanh": dict(activation="gelu_tanh"), "pool=map": dict(pool="map")}


def test_every_config_field_has_a_switch_case():
    assert {f.name for f in dataclasses.fields(dj.ViTConfig)} == set(SWITCHES)


@pytest.mark.parametrize("changes", [*SWITCHES.values(), *EXTRA.values()],
                         ids=[*SWITCHES, *EXTRA])  # fmt: skip
def test_config_switch_is_bounded_soundly_or_refused(changes):
    with jax.enable_x64():
        config = dj.preset("tiny", depth=1).replace(**changes)
        model = dj.ViT(config, rngs=nnx.Rngs(0))
        if config.dtype == "float32" and "dtype" not in changes:
            model = with_dtype(model, "float64")
        c = model.config
        x = jax.random.uniform(jax.random.key(0), (1, c.image_size, c.image_size, c.channels))
        x = x.astype(jnp.float64)
        try:
            at0 = verify.margin_lower_bounds(model, x, jnp.asarray([0]), 0.0, method="ibp")
        except ValueError as err:
            assert "diffjax.verify" in str(err)
            return
        logits = model(x)[0]
        margins = np.asarray(logits[0] - logits)
        assert np.all(np.asarray(at0[0]) <= margins + 1e-12)
        np.testing.assert_allclose(np.asarray(at0[0]), margins, atol=1e-3)
        eps = 1e-3
        lb = np.asarray(verify.margin_lower_bounds(model, x, jnp.asarray([0]), eps, method="ibp"))
        pts = jnp.clip(x + jax.random.uniform(jax.random.key(1), (16, *x.shape[1:]),
                                              minval=-eps, maxval=eps), 0, 1)  # fmt: skip
        out = model(pts)
        assert np.all(lb[0] <= np.asarray(out[:, :1] - out))


def test_bad_input_is_refused_with_a_clear_error():
    with jax.enable_x64():
        model = with_dtype(dj.ViT(dj.preset("tiny", depth=1), rngs=nnx.Rngs(0)), "float64")
        x = jnp.full((2, 8, 8, 3), 0.5)
        y = jnp.asarray([0, 1])
        cases = [
            (dict(norm="l1"), "norm"),
            (dict(method="deeppoly"), "method"),
            (dict(precision="float16"), "precision"),
            (dict(alpha_steps=0), "alpha_steps"),
        ]
        for kwargs, word in cases:
            with pytest.raises(ValueError, match=word):
                verify.margin_lower_bounds(model, x, y, 0.1, **kwargs)
        with pytest.raises(ValueError, match="eps"):
            verify.margin_lower_bounds(model, x, y, -0.1)
        with pytest.raises(ValueError, match="eps"):
            verify.margin_lower_bounds(model, x, y, jnp.ones(3))
        with pytest.raises(ValueError, match="labels"):
            verify.margin_lower_bounds(model, x, jnp.asarray([0, 10]), 0.1)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            verify.margin_lower_bounds(model, x + 1.0, y, 0.1)
        with pytest.raises(ValueError, match="images"):
            verify.margin_lower_bounds(model, x[:, :4], y, 0.1)
        with pytest.raises(ValueError, match="steps"):
            verify.certified_radius(model, x, y, steps=0)


def test_docs_quote_the_saved_benchmark_results():
    import json
    import pathlib

    from benchmarks.verify_speed import table

    root = pathlib.Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "verify.md").read_text()
    files = sorted((root / "results" / "verify").glob("*.json"))
    assert files, "results/verify/*.json (benchmarks/verify_speed.py) are missing"
    for path in files:
        assert table(json.loads(path.read_text())) in doc, path.name
