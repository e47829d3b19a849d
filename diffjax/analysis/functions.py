"""The maps whose Jacobians the analysis differentiates, each as a pure function of ONE example.

Every function here takes the model (an NNX module, which is a pytree, so these functions can be
jitted, vmapped and differentiated with the model as an argument) and one unbatched input:

    attention_maps(model, z, layer, wrt)   z ↦ AttentionMaps of layer ``layer`` ([H, N, N] each)
    attention_layer(model, u, layer)       u = LN1(h_l) [N, D] ↦ Attn_l(u) [N, D]
    block(model, h, layer)                 h_l [N, D] ↦ h_{l+1} [N, D]
    stack(model, h0, depth)                h_0 [N, D] ↦ h_depth [N, D]
    logits(model, image)                   image [H, W, C] in [0, 1] ↦ logits [classes]

``wrt`` names the input the attention maps are differentiated with respect to:

* ``"image"``: the input image (pixel space, [H, W, C]); the maps go through the patch embedding and
  all earlier blocks.
* ``"embeddings"``: the first block's input h_0 ([N, D]: a ViT's embedded patches with CLS and
  positions, a language model's input embeddings E[tokens]); the maps go through all earlier
  blocks. For language models (:class:`diffjax.lm.LM`, whose tokens are not differentiable) this
  is the input space of the analysis.
* ``"block_input"``: the layer's block input h_l ([N, D], before LN1).
* ``"attention_input"``: what the attention module sees, u_l = LN1(h_l) ([N, D]).
"""

from __future__ import annotations

from typing import Literal

import jax
from flax import nnx

from diffjax.attention import AttentionMaps
from diffjax.vit import ViT

Array = jax.Array
Wrt = Literal["image", "embeddings", "block_input", "attention_input"]
WRT: tuple[str, ...] = ("image", "embeddings", "block_input", "attention_input")


def with_dtype(model: ViT, dtype: str) -> ViT:
    """The same model (the same parameter values) computing in ``dtype``: a :class:`ViT`, or
    any module built as ``type(model)(config, rngs=...)`` from a config with ``dtype`` (a CLIP).

    ``"float64"`` gives the float64 evaluation of the trained float32 weights that the exact
    checks use, through the reference attention path; it needs ``jax_enable_x64`` at build and
    call time. Returns ``model`` itself when
    it already computes in ``dtype``.
    """
    if model.config.dtype == dtype:
        return model
    if dtype == "float64" and jax.dtypes.canonicalize_dtype(jax.numpy.float64) != "float64":
        # Without x64 JAX would silently evaluate the "float64" model in float32.
        raise RuntimeError("a float64 model needs jax_enable_x64 (e.g. `with jax.enable_x64():`)")
    # float64 is the exact evaluation: always the reference attention, whatever was trained
    # (a CLIP's towers have only that one).
    fused_possible = hasattr(model.config, "attention_impl")
    exact = {"attention_impl": "reference"} if dtype == "float64" and fused_possible else {}
    config = model.config.replace(dtype=dtype, **exact)
    # eval_shape builds the module without initialising weights that are overwritten at once.
    other = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    return other


def _check_layer(model: ViT, layer: int) -> None:
    if not 0 <= layer < model.config.depth:
        raise ValueError(f"layer {layer} outside 0..{model.config.depth - 1}")


def _check_wrt(wrt: str) -> None:
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {WRT}, got {wrt!r}")


def layer_input(model: ViT, images: Array, layer: int, wrt: Wrt) -> Array:
    """The input ``wrt`` of layer ``layer`` for a batch of images.

    Args:
      images: [B, H, W, C] float in [0, 1].

    Returns:
      ``images`` itself for ``"image"``, h_0 [B, N, D] for ``"embeddings"``, h_l [B, N, D] for
      ``"block_input"``, LN1(h_l) [B, N, D] for ``"attention_input"``. (A language model takes
      token ids [B, N] for ``images``.)
    """
    _check_layer(model, layer)
    _check_wrt(wrt)
    if wrt == "image":
        return images
    h = model.embed(images)
    if wrt == "embeddings":
        return h
    for blk in model.blocks[:layer]:
        h = blk(h)
    return h if wrt == "block_input" else model.blocks[layer].attention_input(h)


def attention_maps(model: ViT, z: Array, layer: int, wrt: Wrt) -> AttentionMaps:
    """Attention maps of layer ``layer`` as a function of one unbatched input ``z``.

    Args:
      z: one example of the input named by ``wrt``: an image [H, W, C] or a token array [N, D].

    Returns:
      :class:`AttentionMaps` with a1 (and a2 for DA) [H, N, N]; ``lam`` is the layer's λ (DA).
    """
    _check_layer(model, layer)
    _check_wrt(wrt)
    blk = model.blocks[layer]
    if wrt == "image":
        u = layer_input(model, z[None], layer, "attention_input")
    elif wrt == "embeddings":
        u = blk.attention_input(stack(model, z, layer)[None])
    elif wrt == "block_input":
        u = blk.attention_input(z[None])
    else:
        u = z[None]
    _, maps = blk.attn(u, return_maps=True)
    return jax.tree.map(lambda t: t[0] if t.ndim else t, maps)


def attention_layer(model: ViT, u: Array, layer: int) -> Array:
    """Layer ``layer``'s attention module on its own input u = LN1(h_l): [N, D] → [N, D]."""
    _check_layer(model, layer)
    return model.blocks[layer].attn(u[None])[0]


def block(model: ViT, h: Array, layer: int) -> Array:
    """One transformer block, h_l [N, D] → h_{l+1} [N, D] (eval mode)."""
    _check_layer(model, layer)
    return model.blocks[layer](h[None])[0]


def stack(model: ViT, h0: Array, depth: int) -> Array:
    """The first ``depth`` blocks, h_0 [N, D] → h_depth [N, D] (``depth`` = 0 is the identity)."""
    if not 0 <= depth <= model.config.depth:
        raise ValueError(f"depth {depth} outside 0..{model.config.depth}")
    h = h0[None]
    for blk in model.blocks[:depth]:
        h = blk(h)
    return h[0]


def logits(model: ViT, image: Array) -> Array:
    """Logits of one image [H, W, C] in [0, 1]: [num_classes]."""
    return model(image[None])[0]


def after(token, x):
    """``x``, available only once ``token`` is computed.

    Feeding each loop's input through ``after(previous loop's output, input)`` makes the
    independent while loops of one computation (Lanczos, chunked Jacobian products) run in
    turn. Overlapping loops are what exposed jaxlib's batched-LAPACK deadlock on XLA:CPU's small
    thread pool (README, "Known issue"); :func:`.lanczos.one_at_a_time` removes its cause, and
    this keeps the loops from competing for the pool.
    """
    _, x = jax.lax.optimization_barrier((token, x))
    return x
