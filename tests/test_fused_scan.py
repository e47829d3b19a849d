"""The accelerator paths against the reference: fused attention, scanned layers, remat.

The fused formulation (``jax.nn.dot_product_attention``; DA as two calls on zero-padded queries
and keys) must compute the reference attention to float32 tolerance, outputs and input
gradients, softmax and DA, with and without a mask: tested through ``impl="fused_xla"``, which
forces it on this CPU (``"fused"`` runs it through cuDNN on a GPU and the reference formulation
everywhere else). The scanned and rematerialised models must compute the loop model's logits and
gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import attention
from diffjax.checkpoint import load_model, save_model
from diffjax.vit import relayout

B, N, D, H = 2, 7, 32, 4
RTOL, ATOL = 1e-5, 1e-6
MASKS = {
    "none": None,
    "causal": jnp.tril(jnp.ones((N, N), bool)),
    # per example, shared by the heads; every row keeps its diagonal (no fully masked row)
    "random": jax.random.bernoulli(jax.random.key(5), 0.6, (B, 1, N, N)) | jnp.eye(N, dtype=bool),
}


def _attention(kind):
    if kind == "softmax":
        module = dj.SoftmaxAttention(D, H, rngs=nnx.Rngs(2))
        return module.params(), lambda p, x, m, impl: dj.softmax_attention(p, x, H, m, impl=impl)
    module = dj.DiffAttention(D, H, 0.37, rngs=nnx.Rngs(1))
    return module.params(), lambda p, x, m, impl: dj.diff_attention(p, x, H, 0.37, m, impl=impl)


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("kind", ["softmax", "diff"])
def test_fused_attention_equals_reference_outputs_and_input_gradients(kind, mask):
    params, f = _attention(kind)
    m = MASKS[mask]
    x = jax.random.normal(jax.random.key(0), (B, N, D))
    w = jax.random.normal(jax.random.key(3), x.shape)  # a random cotangent

    @functools.partial(jax.jit, static_argnums=1)  # one compilation per path, not per operation
    def out_and_input_grad(x, impl):
        return f(params, x, m, impl), jax.grad(lambda x: jnp.sum(w * f(params, x, m, impl)))(x)

    ref, g_ref = out_and_input_grad(x, "reference")
    fused, g_fused = out_and_input_grad(x, "fused_xla")
    np.testing.assert_allclose(fused, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(g_fused, g_ref, rtol=RTOL, atol=ATOL * np.abs(g_ref).max())


def test_fused_runs_cudnn_on_a_gpu_in_half_precision_and_the_reference_elsewhere(monkeypatch):
    # On this CPU "fused" is the reference formulation, to the bit (DA's padded calls would
    # cost twice the reference's FLOPs here, with no fused kernel to pay for them).
    assert attention.fused_kernel(jnp.bfloat16) is None
    for kind in ("softmax", "diff"):
        params, f = _attention(kind)
        x = jax.random.normal(jax.random.key(0), (B, N, D))
        np.testing.assert_array_equal(f(params, x, None, "fused"), f(params, x, None, "reference"))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention.fused_kernel(jnp.bfloat16) == attention.fused_kernel(jnp.float16) == "cudnn"
    assert attention.fused_kernel(jnp.float32) is None  # cuDNN's kernel takes bf16/fp16 only


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_fused_vit_equals_reference_vit_and_maps_come_from_the_reference(attention):
    config = dj.preset("tiny", attention=attention)
    ref = dj.ViT(config, rngs=nnx.Rngs(0))
    fused = dj.ViT(config.replace(attention_impl="fused_xla"), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))

    def logits_and_input_grad(model):  # jitted: one compilation, not one per operation
        apply, params = dj.functional(model)
        f = lambda x: apply(params, x)  # noqa: E731
        return jax.jit(lambda x: (f(x), jax.grad(lambda x: f(x)[:, 0].sum())(x)))(x)

    (out_fused, grad_fused), (out_ref, grad_ref) = map(logits_and_input_grad, (fused, ref))
    np.testing.assert_allclose(out_fused, out_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_fused, grad_ref, rtol=RTOL, atol=ATOL)
    _, maps_fused = fused(x, capture=True)
    _, maps_ref = ref(x, capture=True)
    for a, b in zip(jax.tree.leaves(maps_fused), jax.tree.leaves(maps_ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fused_clip_text_tower_equals_reference():
    # The CLIP text tower shares the attention modules with a causal mask.
    attn = dj.DiffAttention(D, H, 0.8, rngs=nnx.Rngs(4))
    x = jax.random.normal(jax.random.key(2), (B, N, D))
    mask = jnp.tril(jnp.ones((N, N), bool))
    fused = dj.DiffAttention(D, H, 0.8, impl="fused_xla", rngs=nnx.Rngs(4))
    np.testing.assert_allclose(fused(x, mask=mask), attn(x, mask=mask), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attention_impl": "flash"}, "attention_impl must be"),
        ({"attention_impl": "fused", "dtype": "float64"}, "float64"),
        ({"attention_impl": "fused_xla", "dtype": "float64"}, "float64"),
        ({"scan_layers": 1}, "scan_layers must be True or False"),
        ({"attention": "diff", "scan_layers": True, "lambda_init": "schedule"}, "schedule"),
        ({"attention": "diff", "scan_layers": True, "diff_layers": (0,)}, "diff_layers"),
    ],
)
def test_bad_accelerator_configs_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        dj.preset("tiny", **overrides)


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_scanned_and_remat_models_equal_the_loop(attention):
    config = dj.preset("tiny", attention=attention, depth=3)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
    y = jnp.arange(3) % 10
    loop = dj.ViT(config, rngs=nnx.Rngs(0))

    def loss_and_grads(model):
        apply, params = dj.functional(model)
        loss = lambda p: -jax.nn.log_softmax(apply(p, x))[jnp.arange(3), y].mean()  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    ref_loss, ref_grads = loss_and_grads(loop)
    for changes in ({"scan_layers": True}, {"remat": True}, {"scan_layers": True, "remat": True}):
        model = dj.ViT(config.replace(**changes), rngs=nnx.Rngs(0))  # the same initial values
        loss, grads = loss_and_grads(model)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        grads = dj.functional(relayout(nnx.merge(nnx.graphdef(model), grads), False))[1]
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    scanned = dj.ViT(config.replace(scan_layers=True), rngs=nnx.Rngs(0))
    assert scanned.lambdas() == pytest.approx(loop.lambdas()) if attention == "diff" else True
    with pytest.raises(ValueError, match="relayout"):
        scanned(x, capture=True)
    with pytest.raises(TypeError, match="relayout"):
        scanned.blocks[0]


def test_scanned_checkpoint_loads_as_loop_or_scan(tmp_path):
    config = dj.preset("tiny", attention="diff", scan_layers=True)
    model = dj.ViT(config, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    save_model(tmp_path / "m", model)
    loop = load_model(tmp_path / "m")  # default: the per-layer model the analyses index
    assert not loop.config.scan_layers and len(loop.blocks) == config.depth
    np.testing.assert_allclose(loop(x), model(x), rtol=1e-6, atol=1e-7)
    assert load_model(tmp_path / "m", scan_layers=None).config.scan_layers
    back = relayout(loop, True)
    leaves = zip(jax.tree.leaves(nnx.state(back)), jax.tree.leaves(nnx.state(model)), strict=True)
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)
