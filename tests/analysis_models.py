"""Small float64 models for the analysis tests, including DiffViTs with known branch alignment."""

from __future__ import annotations

import functools

import jax
from flax import nnx

import diffjax as dj
from diffjax.analysis import with_dtype

# q/k weights are scaled up from the 0.02-std init so that attention maps are far from uniform.
SCALE = 8.0


@functools.cache  # shared by the test modules; tests never modify a model
def tiny(attention: str, seed: int = 0, **overrides) -> dj.ViT:
    """A float64 view of a tiny ViT/DiffViT (8×8 images, 5 tokens, width 16, 2 layers).

    Call inside ``jax.enable_x64``.
    """
    model = dj.ViT(dj.preset("tiny", attention=attention, **overrides), rngs=nnx.Rngs(seed))
    for blk in model.blocks:
        for name in ("q", "k"):
            lin = getattr(blk.attn, name)
            lin.kernel[...] = lin.kernel[...] * SCALE
    return with_dtype(model, "float64")


def randomise_batch_norms(model: dj.ViT, seed: int = 0) -> dj.ViT:
    """Give every BatchNorm of ``model`` (in place) running statistics and an affine part far
    from the identity's: means N(0, 0.3²), variances U(0.5, 2), scales U(0.5, 1.5), biases
    N(0, 0.1²). Returns ``model``."""
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    for i, m in enumerate(norms):
        k = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), 4)
        shape, dtype = m.mean[...].shape, m.mean[...].dtype
        m.mean[...] = 0.3 * jax.random.normal(k[0], shape, dtype)
        m.var[...] = jax.random.uniform(k[1], shape, dtype, 0.5, 2.0)
        m.scale[...] = jax.random.uniform(k[2], shape, dtype, 0.5, 1.5)
        m.bias[...] = 0.1 * jax.random.normal(k[3], shape, dtype)
    return model


@functools.cache
def tied_branches(sign: float, seed: int = 0) -> dj.ViT:
    """A one-layer DiffViT with two tokens (CLS + one patch) whose branch-2 logits are ±branch-1's.

    sign = +1: A2 = A1, so J2 = J1 (cos θ = +1, ρ = 1).
    sign = −1: q2 = −q1, k2 = k1, so the logits flip sign; with two keys
    softmax(−s) = 1 − softmax(s) entrywise, so J2 = −J1 (cos θ = −1, ρ = 1).
    """
    config = dj.preset("tiny", attention="diff", image_size=4, patch_size=4, depth=1)
    model = dj.ViT(config, rngs=nnx.Rngs(seed))
    attn = model.blocks[0].attn
    d = config.width // config.num_heads
    for name, s in (("q", sign), ("k", 1.0)):
        lin = getattr(attn, name)
        kernel = lin.kernel[...].reshape(config.width, config.num_heads // 2, 2, d) * SCALE
        bias = lin.bias[...].reshape(config.num_heads // 2, 2, d)
        kernel = kernel.at[:, :, 1].set(s * kernel[:, :, 0])
        bias = bias.at[:, 1].set(s * bias[:, 0])
        lin.kernel[...] = kernel.reshape(config.width, config.width)
        lin.bias[...] = bias.reshape(config.width)
    return with_dtype(model, "float64")
