"""ViT and DiffViT: one pre-norm Vision Transformer whose attention is softmax or differential.

    logits = Linear(LN(h_L)[CLS]),   h_{l+1} = h'_l + MLP(LN(h'_l)),   h'_l = h_l + Attn_l(LN(h_l))

The config's switches (``activation``, ``ln_pre``, ``pool``, ``distillation``, ``patch_bias``,
``class_token``, ``num_registers``, ``pos_embed_prefix``, ``layer_scale``, ``qk_norm``,
``proj_bias``, ``mlp_gate``, ``num_classes=0``, and EVA-02's ``rope_base``, ``rope_ref_grid``,
``mlp_norm``) cover imported timm / Hugging Face ViTs, DINOv2, SigLIP-style towers, EVA-02 and
the CLIP image towers; their defaults are the above.
``norm="batchnorm"`` puts eval-mode BatchNorm (an affine map) wherever LN stands and
``activation="relu"`` ReLU MLPs: the verification-friendly ViT of certified training. A model is
built in evaluation mode (BatchNorm reads its running statistics); the training step switches its
copy to batch statistics (``model.train()``) and carries the updated statistics in its state.

Input images are NHWC float in [0, 1]; mean/std normalisation happens inside the model so that
attacks and Jacobians live in pixel space. With ``capture=True`` the model also returns, for every
layer, the block input h_l and the attention maps, which is the hook the analysis code uses.

With ``config.scan_layers`` the blocks are one :class:`ScannedBlocks` (parameters stacked along a
leading layer axis, run by ``nnx.scan``): the same function, compiled once whatever the depth.
:func:`relayout` converts a model between the two layouts; per-layer analysis needs the loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from diffjax.attention import (
    DENSE_INIT,
    AttentionMaps,
    DiffAttention,
    GridRotary,
    SoftmaxAttention,
    diff_lambda,
    latent_attention,
)
from diffjax.config import ViTConfig

Array = jax.Array


@flax.struct.dataclass
class Intermediates:
    """What ``ViT(..., capture=True)`` returns besides the logits.

    Attributes:
      layer_inputs: per layer, the block input h_l, [B, N, D] (N = patches + 1), in the
        accumulation dtype (float32; float64 in float64 mode).
      maps: per layer, the :class:`AttentionMaps` (same dtype).
    """

    layer_inputs: tuple[Array, ...]
    maps: tuple[AttentionMaps, ...]


# What a model's weights are: its parameters and, with ``norm="batchnorm"``, the running
# statistics (what checkpoints save and training carries; the optimizer sees nnx.Param only).
WEIGHTS = (nnx.Param, nnx.BatchStat)
# nnx.BatchNorm's running statistics decay, PyTorch's default (its momentum 0.1 is 1 − 0.9).
BATCHNORM_MOMENTUM = 0.9


def _norm(config: ViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm | nnx.BatchNorm:
    """The token normalisation of ``config.norm`` over the last axis, in evaluation mode."""
    kwargs = dict(epsilon=config.layer_norm_eps, dtype=config.accum_dtype, rngs=rngs)
    if config.norm == "batchnorm":
        return nnx.BatchNorm(
            config.width, use_running_average=True, momentum=BATCHNORM_MOMENTUM, **kwargs
        )
    return nnx.LayerNorm(config.width, **kwargs)


@jax.custom_jvp
def gelu(x: Array) -> Array:
    """Exact GELU, x·Φ(x) with Φ the standard normal CDF (elementwise, any shape).

    The same function as ``jax.nn.gelu(x, approximate=False)``; its derivative Φ(x) + x·φ(x)
    reuses the forward pass's Φ, so a training step evaluates erf once per element instead of
    three times (about 6 % of a depth-6 ViT step on XLA:CPU).
    """
    return x * _normal_cdf(x)


def _normal_cdf(x: Array) -> Array:
    # 1 + erf (PyTorch's form) rather than erfc: erfc costs XLA:CPU two branches, 10 % of a
    # training step. In float32 Φ is then good to an absolute ~1e-7, not relatively in the
    # far negative tail, where x·Φ(x) < 1e-6 is added to O(1) activations anyway.
    return 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = _normal_cdf(x)
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return x * cdf, t * (cdf + x * pdf)


def quick_gelu(x: Array) -> Array:
    """x · sigmoid(1.702 x), the OpenAI CLIP MLP activation (elementwise)."""
    return x * jax.nn.sigmoid(1.702 * x)


# ViTConfig.activation → the function (elementwise, any shape).
ACTIVATION_FUNCTIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu,
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": quick_gelu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def _tokens_dense(layer: nnx.Linear, x: Array) -> Array:
    """``layer`` on [B, N, D_in] tokens as one [B·N, D_in] matrix (one GEMM for the weight
    gradient on XLA:CPU, not a two-axis contraction). Returns [B, N, D_out]."""
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def mlp(
    fc1: nnx.Linear,
    fc2: nnx.Linear,
    activation: str,
    gate: bool,
    x: Array,
    norm: nnx.LayerNorm | None = None,
) -> Array:
    """fc2(act(fc1(x))) on [B, N, D] tokens; with ``gate`` the GLU fc2(act(g)·v), where fc1's
    output is [g | v] (its two halves); ``norm`` (timm EVA-02's ``scale_mlp``) normalises the
    hidden activations before fc2, in its own dtype. Returns [B, N, D_out]."""
    m = _tokens_dense(fc1, x)
    act = ACTIVATION_FUNCTIONS[activation]
    if gate:
        g, v = jnp.split(m, 2, axis=-1)
        hidden = act(g) * v
    else:
        hidden = act(m)
    if norm is not None:
        hidden = norm(hidden).astype(hidden.dtype)
    return _tokens_dense(fc2, hidden)


def _apply_block(block, h: Array, rngs: nnx.Rngs | None) -> Array:
    return block(h) if rngs is None else block(h, rngs=rngs)


# Recomputes the block's activations in the backward pass instead of keeping them.
_remat_block = nnx.remat(_apply_block)


def run_blocks(
    blocks, h: Array, *, capture: bool, remat: bool = False, rngs: nnx.Rngs | None = None
) -> tuple[Array, Intermediates | None]:
    """``h`` [B, N, D] through ``blocks``; with ``capture`` also each block's input and maps.

    ``remat`` rematerialises each block in the backward pass (not with ``capture``); ``rngs``
    (dropout) is passed to blocks that take it.
    """
    inputs, maps = [], []
    apply = _remat_block if remat else _apply_block
    for block in blocks:
        if capture:
            inputs.append(h)
            kwargs = {} if rngs is None else {"rngs": rngs}
            h, m = block(h, return_maps=True, **kwargs)
            maps.append(m)
        else:
            h = apply(block, h, rngs)
    captured = Intermediates(layer_inputs=tuple(inputs), maps=tuple(maps)) if capture else None
    return h, captured


def unbatch(captured: Intermediates) -> Intermediates:
    """Drop the batch axis (of size 1) of captured inputs and maps; λ is a scalar already."""
    return jax.tree.map(lambda t: t[0] if t.ndim else t, captured)


class Block(nnx.Module):
    """Pre-norm transformer block: LN → attention → residual; LN → MLP → residual (the MLP's
    activation is ``config.activation``, exact GELU by default; ``mlp_gate`` makes it a GLU).
    With ``layer_scale`` each branch is multiplied by its learnt γ [D] (``ls1``, ``ls2``)
    before the residual sum."""

    def __init__(self, config: ViTConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        self.dtype = jnp.dtype(c.dtype)
        self.accum_dtype = jnp.dtype(c.accum_dtype)
        self.norm1 = _norm(c, rngs)
        attn = dict(use_bias=c.qkv_bias, impl=c.attention_impl, rngs=rngs)
        if c.is_diff_layer(layer):
            self.attn = DiffAttention(c.width, c.num_heads, c.layer_lambda_init(layer), **attn)
        else:
            qk_eps = c.layer_norm_eps if c.qk_norm else None
            grid = None
            if c.rope_base is not None:
                grid = GridRotary(c.image_size // c.patch_size, c.num_prefix_tokens,
                                  c.rope_base, c.rope_ref_grid)  # fmt: skip
            self.attn = SoftmaxAttention(c.width, c.num_heads, out_bias=c.proj_bias,
                                         qk_norm_eps=qk_eps, grid_rotary=grid, **attn)  # fmt: skip
        self.norm2 = _norm(c, rngs)
        dense = dict(
            kernel_init=DENSE_INIT, bias_init=nnx.initializers.zeros_init(), dtype=self.dtype
        )
        self.fc1 = nnx.Linear(c.width, c.mlp_hidden * (1 + c.mlp_gate), rngs=rngs, **dense)
        self.fc2 = nnx.Linear(c.mlp_hidden, c.width, rngs=rngs, **dense)
        self.mlp_norm = (
            nnx.LayerNorm(c.mlp_hidden, epsilon=c.layer_norm_eps, dtype=c.accum_dtype, rngs=rngs)
            if c.mlp_norm
            else None
        )
        self.ls1, self.ls2 = (
            (nnx.Param(jnp.ones((c.width,), jnp.float32)) for _ in range(2))
            if c.layer_scale
            else (None, None)
        )
        self.drop = nnx.Dropout(c.dropout) if c.dropout > 0 else None
        self.activation = c.activation
        self.mlp_gate = c.mlp_gate

    def _scale(self, x: Array, gamma: nnx.Param | None) -> Array:
        return x if gamma is None else x * gamma[...].astype(x.dtype)

    def _dropout(self, x: Array, rngs: nnx.Rngs | None) -> Array:
        if self.drop is None or rngs is None:
            return x
        return self.drop(x, deterministic=False, rngs=rngs)

    def attention_input(self, h: Array) -> Array:
        """LN1(h) in the compute dtype: what the attention layer sees. [B, N, D]."""
        return self.norm1(h).astype(self.dtype)

    def __call__(self, h: Array, *, rngs: nnx.Rngs | None = None, return_maps: bool = False):
        """h [B, N, D] (accumulation dtype) → h_next [B, N, D], and the maps if asked."""
        a = self.attn(self.attention_input(h), return_maps=return_maps)
        a, maps = a if return_maps else (a, None)
        h = h + self._dropout(self._scale(a.astype(self.accum_dtype), self.ls1), rngs)
        m = mlp(self.fc1, self.fc2, self.activation, self.mlp_gate,
                self.norm2(h).astype(self.dtype), self.mlp_norm)  # fmt: skip
        h = h + self._dropout(self._scale(m.astype(self.accum_dtype), self.ls2), rngs)
        return (h, maps) if return_maps else h


class ScannedBlocks(nnx.Module):
    """``depth`` identical blocks as one :class:`Block` whose parameters have a leading layer
    axis [depth, ...], applied by ``nnx.scan`` (one compiled block body, any depth).

    Built from the loop's blocks, so a scanned and a loop model of one seed hold the same
    parameters. It cannot be indexed: per-layer code needs ``relayout(model, False)``.
    """

    def __init__(self, blocks: list[Block]):
        graphdef = nnx.graphdef(blocks[0])
        states = [nnx.state(b) for b in blocks]
        self.depth = len(blocks)
        self.layers = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))

    def __getitem__(self, index):
        raise TypeError(
            "the blocks of a scan_layers=True model are one stacked module and cannot be "
            "indexed; per-layer code needs the loop model: diffjax.vit.relayout(model, False)"
        )

    def __call__(self, h: Array, *, rngs: nnx.Rngs | None = None, remat: bool = False) -> Array:
        """h [B, N, D] → h after every block. With ``rngs``, layer l's dropout draws from the
        l-th of ``depth`` keys split from one ``rngs.dropout()`` key (not the loop's stream)."""
        keys = None if rngs is None else jax.random.split(rngs.dropout(), self.depth)
        apply = _remat_block if remat else _apply_block

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def body(h, block, key):
            return apply(block, h, None if key is None else nnx.Rngs(dropout=key))

        return body(h, self.layers, keys)


class AttentionPool(nnx.Module):
    """timm's ``AttentionPoolLatent`` (``global_pool="map"``, SigLIP): one learnt latent query
    attends over the tokens (``num_heads`` heads, biased q/k/v/out projections), then a
    residual MLP, x + MLP(LN(x)) (plain, ``activation``, hidden ``width·mlp_ratio``).

    Call with tokens [B, N, D]; returns the pooled [B, D] in the accumulation dtype.
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        c = config
        self.num_heads, self.activation = c.num_heads, c.activation
        self.latent = nnx.Param(DENSE_INIT(rngs.params(), (1, 1, c.width), jnp.float32))
        self.attn = SoftmaxAttention(c.width, c.num_heads, rngs=rngs)  # holds q/k/v/out
        self.norm = _norm(c, rngs)
        dense = dict(kernel_init=DENSE_INIT, bias_init=nnx.initializers.zeros_init())
        self.fc1 = nnx.Linear(c.width, c.mlp_hidden, dtype=c.accum_dtype, rngs=rngs, **dense)
        self.fc2 = nnx.Linear(c.mlp_hidden, c.width, dtype=c.accum_dtype, rngs=rngs, **dense)

    def __call__(self, x: Array) -> Array:
        latent = jnp.broadcast_to(self.latent[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        p = latent_attention(self.attn.params(), latent, x, self.num_heads)
        p = p + mlp(self.fc1, self.fc2, self.activation, False, self.norm(p))
        return p[:, 0]


class ViT(nnx.Module):
    """ViT (``attention="softmax"``) or DiffViT (``attention="diff"``) classifier.

    Call with images [B, H, W, C] (or one image [H, W, C]) float in [0, 1]; returns logits
    [B, num_classes] (or [num_classes]) in float32 (float64 in float64 mode).
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.accum_dtype = jnp.dtype(c.accum_dtype)
        patch_dim = c.patch_size * c.patch_size * c.channels
        dense = dict(kernel_init=DENSE_INIT, bias_init=nnx.initializers.zeros_init())
        # A Dense over (ph, pw, c)-flattened patches is a stride-p convolution with an HWIO kernel.
        self.patch_embed = nnx.Linear(
            patch_dim, c.width, use_bias=c.patch_bias, dtype=self.accum_dtype, rngs=rngs, **dense
        )

        def tokens(n: int, present: bool = True) -> nnx.Param | None:
            # A key is drawn only for a token that exists: the default model's parameters stay
            # those of the same seed before the optional tokens existed.
            if not present:
                return None
            return nnx.Param(DENSE_INIT(rngs.params(), (1, n, c.width), jnp.float32))

        self.cls_token = tokens(1, c.class_token)
        self.dist_token = tokens(1, c.distillation)
        self.reg_token = tokens(c.num_registers, c.num_registers > 0)
        self.pos_embed = tokens(c.num_positions)
        self.ln_pre = _norm(c, rngs) if c.ln_pre else None
        blocks = [Block(c, i, rngs=rngs) for i in range(c.depth)]
        self.blocks = ScannedBlocks(blocks) if c.scan_layers else nnx.List(blocks)
        self.norm = _norm(c, rngs)
        self.attn_pool = AttentionPool(c, rngs=rngs) if c.pool == "map" else None

        def head() -> nnx.Linear | None:
            return nnx.Linear(c.width, c.num_classes, dtype=self.accum_dtype, rngs=rngs, **dense)

        self.head = head() if c.num_classes else None
        self.head_dist = head() if c.distillation else None

    def lambdas(self) -> list[float | None]:
        """λ of every layer, in order; ``None`` for softmax layers (host floats: for logging)."""
        if isinstance(self.blocks, ScannedBlocks):
            attn = self.blocks.layers.attn
            if not isinstance(attn, DiffAttention):
                return [None] * self.blocks.depth
            lam = jax.vmap(lambda p: diff_lambda(p, attn.lambda_init))(attn.params())
            return [float(x) for x in lam]
        return [float(b.attn.lam()) if isinstance(b.attn, DiffAttention) else None
                for b in self.blocks]  # fmt: skip

    def _check_images(self, images: Array) -> None:
        c = self.config
        want = (c.image_size, c.image_size, c.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"images must be [B, {want[0]}, {want[1]}, {want[2]}] (NHWC) or one image "
                f"{list(want)}, got shape {tuple(images.shape)}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(
                f"images must be floating point in [0, 1], got dtype {images.dtype} "
                "(convert uint8 with x / 255)"
            )

    def embed(self, images: Array) -> Array:
        """Normalise, patchify, embed, prepend the prefix tokens (CLS, DIST, registers, those the
        config has) and add positions (before or after the prepending, ``pos_embed_prefix``),
        then ``ln_pre`` if the config has it: [B, H, W, C] → h_0 [B, N, D]."""
        c = self.config
        self._check_images(images)
        mean = jnp.asarray(c.mean, self.accum_dtype)
        std = jnp.asarray(c.std, self.accum_dtype)
        x = (images.astype(self.accum_dtype) - mean) / std
        b, p, g = x.shape[0], c.patch_size, c.image_size // c.patch_size
        x = x.reshape(b, g, p, g, p, c.channels).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, g * g, p * p * c.channels)
        tokens = _tokens_dense(self.patch_embed, x)
        prefix = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        prefix = [jnp.broadcast_to(t[...], (b, *t.shape[1:])) for t in prefix]
        if c.pos_embed_prefix:
            h = jnp.concatenate([*prefix, tokens], axis=1) + self.pos_embed[...]
        else:
            h = jnp.concatenate([*prefix, tokens + self.pos_embed[...]], axis=1)
        h = h.astype(self.accum_dtype)
        return h if self.ln_pre is None else self.ln_pre(h)

    def classify(self, h: Array) -> Array:
        """Final LN, pooling and linear head: h_L [B, N, D] → logits [B, classes] (the pooled
        features [B, D] when the config has no head, ``num_classes=0``).

        ``pool="cls"``: the head on LN(h_L)[CLS] (with ``distillation``, the mean of it and the
        DIST head on LN(h_L)[DIST]); ``pool="mean"``: the head on LN(mean of the patch tokens);
        ``pool="map"``: the head on the attention pool of LN(h_L)'s patch tokens.
        """
        c = self.config
        head = (lambda x: x) if self.head is None else self.head
        if c.pool == "mean":
            return head(self.norm(jnp.mean(h[:, c.num_prefix_tokens :], axis=1)))
        x = self.norm(h)
        if c.pool == "map":
            return head(self.attn_pool(x[:, c.num_prefix_tokens :]))
        if c.distillation:
            return 0.5 * (self.head(x[:, 0]) + self.head_dist(x[:, 1]))
        return head(x[:, 0])

    def __call__(
        self,
        images: Array,
        *,
        rngs: nnx.Rngs | None = None,
        capture: bool = False,
    ):
        """Logits of ``images``; dropout is active only when ``rngs`` is given.

        With ``capture=True`` returns ``(logits, Intermediates)`` (loop models only).
        """
        c = self.config
        if capture and c.scan_layers:
            raise ValueError(
                "capture=True needs the per-layer model, this one has scan_layers=True: "
                "use diffjax.vit.relayout(model, False)"
            )
        single = images.ndim == 3
        if single:
            images = images[None]
        h = self.embed(images)
        if c.scan_layers:
            if rngs is not None:
                h = self.blocks.layers._dropout(h, rngs)
            h, captured = self.blocks(h, rngs=rngs, remat=c.remat), None
        else:
            if rngs is not None:
                h = self.blocks[0]._dropout(h, rngs)
            h, captured = run_blocks(
                self.blocks, h, capture=capture, remat=c.remat and not capture, rngs=rngs
            )
        logits = self.classify(h)
        if single:
            logits = logits[0]
            captured = captured and unbatch(captured)
        return (logits, captured) if capture else logits


def relayout(model: ViT, scan_layers: bool) -> ViT:
    """The same model (same parameters) with its blocks in a loop or stacked for ``nnx.scan``.

    Args:
      model: a ViT of either layout.
      scan_layers: the layout wanted (``False``: the per-layer model the analyses index).

    Returns:
      ``model`` itself when it has that layout already, else a new ViT whose config differs only
      in ``scan_layers``.
    """
    if model.config.scan_layers == scan_layers:
        return model
    config = model.config.replace(scan_layers=scan_layers)
    target = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
    if scan_layers:
        layers = [params["blocks"][i] for i in range(config.depth)]
        params["blocks"] = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    else:
        stacked = params["blocks"]["layers"]
        params["blocks"] = {
            i: jax.tree.map(functools.partial(lambda i, x: x[i], i), stacked)
            for i in range(config.depth)
        }
    state = nnx.state(target, WEIGHTS)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(target, state)
    return target


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves) of ``model``."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def functional(model: nnx.Module) -> tuple[Callable[..., Any], Any]:
    """Split ``model`` into a pure ``apply(params, images, **kw)`` and its parameter state.

    ``apply`` is a plain function of (parameters, input): it can be jitted, vmapped and
    differentiated with respect to either argument.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(params, images, **kwargs):
        return nnx.merge(graphdef, params, rest)(images, **kwargs)

    return apply, params
