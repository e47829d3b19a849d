"""ViT / DiffViT: float64 reference forward, parameter parity, transformations, errors, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import diffjax as dj
from tests import reference
from tests.analysis_models import randomise_batch_norms


def _images(n=4, size=8, seed=0, dtype=jnp.float32):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 3), dtype)


def _model(attention="diff", seed=0, **kw):
    model = dj.ViT(dj.preset("tiny", attention=attention, **kw), rngs=nnx.Rngs(seed))
    return randomise_batch_norms(model, seed)


def _param_dict(model):
    return nnx.to_pure_dict(nnx.state(model, dj.vit.WEIGHTS))


@pytest.mark.parametrize(
    "attention, overrides",
    [
        ("softmax", {}),
        ("diff", {}),
        ("diff", {"lambda_init": "schedule", "diff_layers": (1,), "qkv_bias": False}),
        ("softmax", {"norm": "batchnorm", "activation": "relu"}),
        ("diff", {"norm": "batchnorm"}),
    ],
)
def test_forward_matches_float64_reference(attention, overrides):
    model = _model(attention, **overrides)
    x = _images()
    ref = reference.vit_logits(_param_dict(model), model.config, x)
    np.testing.assert_allclose(model(x), ref, rtol=1e-4, atol=1e-5)
    with jax.enable_x64(True):
        model64 = _model(attention, dtype="float64", **overrides)
        out = model64(jnp.asarray(x, jnp.float64))
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)


# The switches of imported models (timm / Hugging Face DINOv2, SigLIP, qk-norm ViTs), each
# against the float64 reference with every parameter drawn anew (no γ at 1, no norm at 1/0).
IMPORTED_SWITCHES = {
    "layer_scale_registers": dict(layer_scale=True, num_registers=3, pos_embed_prefix=False),
    "registers_with_positions": dict(num_registers=2),
    "no_cls_map_head": dict(class_token=False, pool="map", num_classes=0),
    "no_cls_mean": dict(class_token=False, pool="mean", activation="gelu_tanh"),
    "qk_norm_no_qkv_bias": dict(qk_norm=True, qkv_bias=False, proj_bias=True),
    "swiglu_headless": dict(mlp_gate=True, activation="silu", num_classes=0, mlp_ratio=1.5),
}


@pytest.mark.parametrize("case", sorted(IMPORTED_SWITCHES))
def test_imported_model_switches_match_float64_reference(case):
    with jax.enable_x64(True):
        config = dj.preset("tiny", dtype="float64", **IMPORTED_SWITCHES[case])
        model = dj.ViT(config, rngs=nnx.Rngs(0))
        state = nnx.state(model, nnx.Param)
        leaves, tree = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        drawn = [0.5 * jax.random.normal(k, x.shape, jnp.float32) + (x.ndim == 1)
                 for k, x in zip(keys, leaves, strict=True)]  # fmt: skip
        nnx.update(model, jax.tree.unflatten(tree, drawn))
        x = _images(dtype=jnp.float64)
        out = model(x)
        ref = reference.vit_logits(_param_dict(model), config, x)
    assert out.shape == (4, config.num_classes or config.width)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["tiny", "cifar"])
def test_diffvit_has_vit_parameters_plus_6d_per_da_layer(name):
    soft = dj.preset(name)
    d = soft.width // soft.num_heads
    n_soft = dj.count_params(jax.eval_shape(lambda: dj.ViT(soft, rngs=nnx.Rngs(0))))
    for diff_layers, n_da in [(None, soft.depth), ((0,), 1)]:
        cfg = soft.replace(attention="diff", diff_layers=diff_layers)
        n_diff = dj.count_params(jax.eval_shape(lambda c=cfg: dj.ViT(c, rngs=nnx.Rngs(0))))
        assert n_diff == n_soft + 6 * d * n_da


def test_diff_layers_switch_selects_attention_per_layer():
    model = _model("diff", diff_layers=(1,), lambda_init="schedule")
    assert isinstance(model.blocks[0].attn, dj.SoftmaxAttention)
    assert isinstance(model.blocks[1].attn, dj.DiffAttention)
    assert model.blocks[1].attn.lambda_init == dj.lambda_init_schedule(1)
    _, inter = model(_images(), capture=True)
    assert inter.maps[0].a2 is None and inter.maps[1].a2.shape == (4, 2, 5, 5)


def test_capture_returns_layer_inputs_that_reproduce_the_logits():
    model = _model()
    x = _images()
    logits, inter = model(x, capture=True)
    np.testing.assert_array_equal(inter.layer_inputs[0], model.embed(x))
    h = inter.layer_inputs[-1]
    np.testing.assert_allclose(model.classify(model.blocks[-1](h)), logits, rtol=1e-6, atol=1e-6)


def test_single_image_equals_its_batch_row():
    model = _model()
    x = _images()
    np.testing.assert_allclose(model(x[1]), model(x)[1], rtol=1e-6, atol=1e-7)


def test_jit_vmap_and_functional_agree():
    model = _model()
    apply, params = dj.functional(model)
    x = _images()
    eager = model(x)
    np.testing.assert_allclose(jax.jit(apply)(params, x), eager, rtol=1e-6, atol=1e-7)
    per_example = jax.vmap(lambda im: apply(params, im))(x)
    np.testing.assert_allclose(per_example, eager, rtol=1e-6, atol=1e-7)


def test_input_gradient_matches_central_differences_in_float64():
    with jax.enable_x64(True):
        model = _model(dtype="float64")
        apply, params = dj.functional(model)
        x = _images(n=1, dtype=jnp.float64)[0]
        g = jax.jit(lambda im: apply(params, im))
        f = lambda im: g(im)[3]  # noqa: E731
        grad = jax.jit(jax.grad(f))(x)
        v = jax.random.normal(jax.random.key(7), x.shape, jnp.float64)
        h = 1e-5
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        np.testing.assert_allclose(jnp.vdot(grad, v), fd, rtol=1e-8)
        # Full Jacobian by reverse and forward mode, checked against each other and a JVP.
        jac_rev = jax.jit(jax.jacrev(g))(x)
        jac_fwd = jax.jit(jax.jacfwd(g))(x)
        np.testing.assert_allclose(jac_rev, jac_fwd, rtol=1e-10, atol=1e-12)
        _, jvp = jax.jit(lambda v: jax.jvp(g, (x,), (v,)))(v)
        np.testing.assert_allclose(jnp.tensordot(jac_rev, v, axes=3), jvp, rtol=1e-10, atol=1e-12)
        fd_vec = (g(x + h * v) - g(x - h * v)) / (2 * h)
        np.testing.assert_allclose(jvp, fd_vec, rtol=1e-7, atol=1e-9)


def test_forward_sharded_over_devices_equals_single_device():
    n_dev = jax.device_count()
    model = _model()
    apply, params = dj.functional(model)
    x = _images(n=2 * n_dev)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    out = jax.jit(apply)(params, xs)
    assert len(out.sharding.device_set) == n_dev
    np.testing.assert_allclose(out, apply(params, x), rtol=1e-6, atol=1e-7)


def test_dropout_only_acts_when_rngs_are_given():
    model = _model(dropout=0.5)
    x = _images()
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.allclose(model(x, rngs=nnx.Rngs(dropout=1)), model(x))


def test_initialiser_is_shared_by_both_variants():
    soft, diff = _model("softmax", seed=3), _model("diff", seed=3)
    k_soft = np.asarray(soft.blocks[0].fc1.kernel[...])
    assert abs(k_soft.std() - 0.02) < 0.004 and np.abs(k_soft).max() <= 0.04 + 1e-7
    for m in (soft, diff):
        assert np.all(np.asarray(m.blocks[0].fc1.bias[...]) == 0)
        assert np.all(np.asarray(m.blocks[0].norm1.scale[...]) == 1)
    np.testing.assert_array_equal(soft.patch_embed.kernel[...], diff.patch_embed.kernel[...])


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attention": "diff", "num_heads": 3, "width": 18}, "even num_heads"),
        ({"width": 18, "num_heads": 4}, "divisible"),
        ({"patch_size": 3}, "does not divide"),
        ({"lambda_init": "official"}, "lambda_init"),
        ({"attention": "linear"}, "attention"),
        ({"diff_layers": (0,)}, "only meaningful"),
        ({"attention": "diff", "diff_layers": (5,)}, "outside"),
        ({"depth": 0}, "positive"),
        ({"dtype": "float16"}, "dtype"),
        ({"std": (1.0, 0.0, 1.0)}, "positive"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        dj.preset("tiny", **overrides)
    with pytest.raises(ValueError, match="unknown preset"):
        dj.preset("huge")


def test_bad_inputs_raise_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((2, 3, 8, 8)))  # NCHW
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((2, 16, 16, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((8, 8)))
    with pytest.raises(TypeError, match="floating point"):
        model(jnp.zeros((2, 8, 8, 3), jnp.uint8))


def test_gelu_is_exact_gelu_with_its_analytic_derivatives():
    from scipy.special import erfc

    x = np.linspace(-9.0, 9.0, 1001)
    cdf = 0.5 * erfc(-x / np.sqrt(2))
    pdf = np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x)
        np.testing.assert_allclose(dj.vit.gelu(x64), x * cdf, rtol=1e-13, atol=1e-15)
        d = jax.vmap(jax.grad(dj.vit.gelu))(x64)
        np.testing.assert_allclose(d, cdf + x * pdf, rtol=1e-13, atol=1e-15)
        # Forward mode, and the second derivative (2 − x²)·φ(x) through the custom JVP.
        _, t = jax.jvp(dj.vit.gelu, (x64,), (jnp.ones_like(x64),))
        np.testing.assert_allclose(t, d, rtol=1e-15)
        d2 = jax.vmap(jax.grad(jax.grad(dj.vit.gelu)))(x64)
        np.testing.assert_allclose(d2, (2 - x**2) * pdf, rtol=1e-10, atol=1e-15)
    x32 = jnp.asarray(x, jnp.float32)
    # float32: a few ulp of the exact value; in the negative tail x·Φ(x) with Φ good to an
    # absolute ~1e-7 (the 1 + erf form).
    err = np.abs(np.asarray(dj.vit.gelu(x32), np.float64) - x * cdf)
    assert np.all(err <= 1e-6 * np.abs(x * cdf) + 1.2e-7 * np.abs(x)), err.max()
