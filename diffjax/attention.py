"""Standard softmax attention and Differential Attention (DA), as pure functions and NNX modules.

Differential Attention (Ye et al. 2024, arXiv 2410.05258), for each DIFF head h::

    A1 = softmax(Q1 K1ᵀ / √d),  A2 = softmax(Q2 K2ᵀ / √d)
    λ  = exp(λq1·λk1) − exp(λq2·λk2) + λ_init          (one scalar per layer)
    O_h = RMSNorm((A1 − λ A2) V_h) · (1 − λ_init)        (RMSNorm over 2d, eps 1e-5, shared scale)

with q/k sub-heads paired (2h, 2h+1) and value heads 2d wide. ``d = width / num_heads`` where
``num_heads`` is the head count of the parameter-matched softmax baseline; DA has ``num_heads / 2``
DIFF heads. Softmaxes, λ and the RMSNorm are computed in float32 (float64 when the input is float64)
whatever the compute dtype.

Language models add two options to both: a causal mask (:func:`causal_mask`; the modules'
``causal=True``) and rotary position embeddings on queries and keys (``rotary_base``, see
:func:`rotary`), applied per q/k sub-head of width d as the official Diff Transformer does.

The pure functions :func:`softmax_attention` and :func:`diff_attention` take parameters as a plain
mapping so that analysis code (Jacobians, Lipschitz constants) can differentiate them with respect
to the layer input; the modules :class:`SoftmaxAttention` and :class:`DiffAttention` only own the
parameters and call them.

Three implementations compute the same function (``impl``):

* ``"reference"`` (the default): einsums and a softmax that materialise every [N, N] map, in the
  input's precision (float64 for the exact analyses). The only path that returns the maps.
* ``"fused"``: the fused kernel where one runs, chosen while tracing (:func:`fused_kernel`):
  cuDNN's :func:`jax.nn.dot_product_attention` on a GPU in bf16/fp16. Everywhere else (CPU, TPU,
  float32) there is no fused kernel, XLA's ``dot_product_attention`` is the same einsums and
  softmax, and ``"fused"`` runs the reference formulation, which for DA has the fewest FLOPs.
* ``"fused_xla"``: the fused path's formulation forced through XLA's ``dot_product_attention``
  on any backend (what ``"fused"`` runs through cuDNN), so that it is tested and timed without a
  GPU.

The fused formulation of softmax attention is one call. DA is two calls, one per branch map,
each applied to the 2d-wide value heads (the call needs one head dim for q, k and v: queries and
keys are zero-padded from d to 2d, which leaves every logit unchanged), combined after as
O1 − λ·O2, then the same RMSNorm and (1 − λ_init). Per pair of sub-heads it costs 8·N²·d
multiply-adds (two N×N×2d logit products, two N×N×2d value products) against the reference's
4·N²·d (two N×N×d logit products, then A1 − λA2 applied to V once): worth it only where the fused
kernel saves the memory traffic of the maps. Asking for the maps (``return_maps=True``) runs the
reference path whatever ``impl`` says, so analyses always see them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from diffjax.config import IMPLS

Array = jax.Array

RMS_EPS = 1e-5
LAMBDA_STD = 0.1
DENSE_INIT = nnx.initializers.truncated_normal(stddev=0.02)


@flax.struct.dataclass
class AttentionMaps:
    """Attention maps of one layer, float32.

    Attributes:
      a1: [B, H, N, N] first-branch softmax map (DA) or the map of each head (softmax attention,
        H = its head count).
      a2: [B, H, N, N] second-branch map (DA); ``None`` for softmax attention.
      lam: [] the layer's λ (DA); ``None`` for softmax attention.
    """

    a1: Array
    a2: Array | None = None
    lam: Array | None = None

    @property
    def combined(self) -> Array:
        """The map applied to V: A1 − λ·A2 for DA, A for softmax attention. [B, H, N, N]."""
        if self.a2 is None:
            return self.a1
        return self.a1 - self.lam * self.a2


def _wide(x: Array) -> Array:
    """``x`` in at least float32: bfloat16 is widened, float64 (exact analyses) kept."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _softmax_wide(logits: Array, mask: Array | None) -> Array:
    logits = _wide(logits)
    if mask is not None:
        # A finite fill keeps fully masked rows NaN-free; exp(min − max) underflows to exactly 0.
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits, axis=-1)


def _dense(x: Array, p: Mapping[str, Array]) -> Array:
    # As one [tokens, D] matrix: XLA:CPU then runs the weight gradient as a single GEMM rather
    # than a dot contracting over two axes (about 1.8× slower on the ViT's MLP shapes).
    y = x.reshape(-1, x.shape[-1]) @ p["kernel"].astype(x.dtype)
    if p.get("bias") is not None:
        y = y + p["bias"].astype(x.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _heads(x: Array, p: Mapping[str, Array], heads: int) -> Array:
    """Project [B, N, D] tokens and split into head-major [B, heads, N, D / heads]."""
    b, n, _ = x.shape
    y = _dense(x, p)
    # Head-major operands make every attention product a plain batched GEMM; XLA:CPU otherwise
    # transposes inside each product, forward and backward.
    return y.reshape(b, n, heads, -1).transpose(0, 2, 1, 3)


def causal_mask(n: int) -> Array:
    """[N, N] bool, True where query i may attend key j, i.e. j <= i."""
    return jnp.tril(jnp.ones((n, n), bool))


def rotary(x: Array, base: float, seq_axis: int, half: bool = False) -> Array:
    """Rotary position embedding, positions 0..N-1.

    Interleaved (GPT-J, the default): pair i of the last axis, (x[2i], x[2i+1]), at position p
    is rotated by the angle p·base^(−2i/d): x'[2i] = x[2i]·cos − x[2i+1]·sin,
    x'[2i+1] = x[2i]·sin + x[2i+1]·cos. ``half`` (GPT-NeoX, Hugging Face LLaMA's
    ``rotate_half``): pair i is (x[i], x[i + d/2]), with the same angles.

    Args:
      x: [..., d] with the sequence on ``seq_axis`` (d even); queries or keys of one sub-head.
      base: θ of the frequencies (10,000 in RoFormer and LLaMA).
      seq_axis: the axis of the N positions.
      half: the half-split pairing instead of the interleaved one.

    Returns:
      the rotated array, same shape and dtype (angles computed in at least float32, in float64
      for float64 input).
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary position embeddings need an even head dim, got {d}")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    freqs = base ** (-jnp.arange(0, d, 2, dtype=dtype) / d)
    angles = jnp.arange(x.shape[seq_axis], dtype=dtype)[:, None] * freqs  # [N, d/2]
    return rotate_pairs(x, angles, seq_axis, half)


def rotate_pairs(x: Array, angles: Array, seq_axis: int, half: bool = False) -> Array:
    """Turn each pair of ``x``'s last axis by its angle (the pairing of :func:`rotary`).

    Args:
      x: [..., d] with the N positions on ``seq_axis``.
      angles: [N, d/2] radians, pair i of position p turned by angles[p, i]; a zero row leaves
        its token exactly as it is (cos 0 = 1, sin 0 = 0).
      seq_axis: the axis of the N positions.
      half: the half-split pairing (x[i], x[i + d/2]) instead of (x[2i], x[2i+1]).

    Returns:
      the rotated array, same shape and dtype (computed in ``angles``' dtype or wider).
    """
    d = x.shape[-1]
    n = x.shape[seq_axis]
    dtype = jnp.promote_types(x.dtype, angles.dtype)
    shape = [1] * x.ndim
    shape[seq_axis], shape[-1] = n, d // 2
    cos, sin = jnp.cos(angles).reshape(shape), jnp.sin(angles).reshape(shape)
    if half:
        first, second = jnp.split(x.astype(dtype), 2, axis=-1)
        out = jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
        return out.astype(x.dtype)
    pairs = x.astype(dtype).reshape(*x.shape[:-1], d // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class GridRotary:
    """2-D rotary positions of a ViT's patch grid (timm EVA-02's ``RotaryEmbeddingCat``).

    Attributes:
      grid: patches per side; the patch tokens are in row-major order after the prefix.
      num_prefix: tokens before the patches (CLS, registers), left unturned.
      base: θ of the frequencies.
      ref_grid: EVA's ``ref_feat_shape``: row and column scaled by ``ref_grid / grid``;
        ``None``: unscaled.
    """

    grid: int
    num_prefix: int
    base: float
    ref_grid: int | None = None

    def angles(self, d: int, dtype) -> Array:
        """[num_prefix + grid², d/2] angles for a head dim d (a multiple of 4): the prefix rows
        zero; patch (r, c)'s pair j < d/4 at r·θ^(−j/(d/4)), pair d/4 + j at c·θ^(−j/(d/4))
        (the interleaved layout of :func:`rotate_pairs`)."""
        if d % 4:
            raise ValueError(f"2-D rotary positions need a head dim divisible by 4, got {d}")
        freqs = self.base ** (-jnp.arange(d // 4, dtype=dtype) / (d // 4))
        pos = jnp.arange(self.grid, dtype=dtype)
        if self.ref_grid is not None:
            pos = pos / self.grid * self.ref_grid
        rows = jnp.repeat(pos, self.grid)[:, None] * freqs
        cols = jnp.tile(pos, self.grid)[:, None] * freqs
        patches = jnp.concatenate([rows, cols], axis=-1)
        return jnp.concatenate([jnp.zeros((self.num_prefix, d // 2), dtype), patches])


def _grid_rotate(t: Array, grid: GridRotary | None, seq_axis: int) -> Array:
    if grid is None:
        return t
    return rotate_pairs(t, grid.angles(t.shape[-1], jnp.promote_types(t.dtype, jnp.float32)),
                        seq_axis)  # fmt: skip


def head_norm(t: Array, p: Mapping[str, Array], eps: float) -> Array:
    """LayerNorm over the last axis (a head's d channels) of ``t`` [..., d] with ``p``'s
    ``scale`` and ``bias`` [d]; statistics in at least float32, the result in ``t``'s dtype
    (timm's ``qk_norm``, applied per head to queries and keys)."""
    x = _wide(t)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    y = (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"].astype(x.dtype) + p["bias"].astype(x.dtype)
    return y.astype(t.dtype)


def _qk_norm(q: Array, k: Array, params: Mapping[str, Any], eps: float | None):
    if params.get("q_norm") is None:
        return q, k
    return head_norm(q, params["q_norm"], eps), head_norm(k, params["k_norm"], eps)


def _rotate(t: Array, base: float | None, seq_axis: int, half: bool = False) -> Array:
    return t if base is None else rotary(t, base, seq_axis, half)


def _kv_heads(x: Array, p: Mapping[str, Array], num_heads: int, kv_heads: int, axis: int):
    """Keys or values of ``kv_heads`` heads, each repeated for its ``num_heads / kv_heads``
    query heads (grouped-query attention: query head h reads kv head h // group), along the
    head ``axis`` (1: head-major [B, H, N, d], 2: token-major [B, N, H, d])."""
    t = _heads(x, p, kv_heads) if axis == 1 else _tokens_heads(x, p, kv_heads)
    return t if kv_heads == num_heads else jnp.repeat(t, num_heads // kv_heads, axis=axis)


def _check_input(x: Array, params: Mapping[str, Any], num_heads: int) -> None:
    width = params["q"]["kernel"].shape[0]
    if x.ndim != 3 or x.shape[-1] != width:
        raise ValueError(f"attention input must be [B, N, {width}], got shape {x.shape}")
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"attention implementation must be one of {IMPLS}, got {impl!r}")


def fused_kernel(dtype) -> str | None:
    """The fused kernel ``impl="fused"`` uses for inputs of ``dtype``: ``"cudnn"`` or ``None``.

    cuDNN's fused attention runs on a GPU for bf16/fp16 inputs; elsewhere there is none (XLA's
    ``dot_product_attention`` is einsums and a softmax, like the reference), and ``None`` makes
    ``"fused"`` run the reference formulation. Decided while tracing, from the default backend.
    """
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return None


def _formulation(impl: str, dtype, return_maps: bool) -> str | None:
    """The ``jax.nn.dot_product_attention`` implementation to call, or None: the reference."""
    if return_maps or impl == "reference":
        return None
    return "xla" if impl == "fused_xla" else fused_kernel(dtype)


def _tokens_heads(x: Array, p: Mapping[str, Array], heads: int) -> Array:
    """Project [B, N, D] tokens to the token-major [B, N, heads, D / heads] of the fused call."""
    b, n, _ = x.shape
    return _dense(x, p).reshape(b, n, heads, -1)


def fused_attention(
    q: Array, k: Array, v: Array, scale: float, mask: Array | None, implementation: str = "xla"
) -> Array:
    """softmax(q kᵀ · scale) v per head through :func:`jax.nn.dot_product_attention`.

    Args:
      q, k, v: [B, N, H, d] (one dtype, one head dim).
      scale: the logit scale.
      mask: optional boolean, broadcastable to [B, H, N, N]; True = may attend.
      implementation: ``"cudnn"`` (falls back to ``"xla"`` for a shape, dtype or cuDNN version
        the kernel refuses; it checks while tracing) or ``"xla"``.

    Returns:
      [B, N, H, d] in the input dtype.
    """
    if mask is not None:  # the fused call takes 4-d masks only
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if implementation == "cudnn":
        try:
            return jax.nn.dot_product_attention(
                q, k, v, mask=mask, scale=scale, implementation="cudnn"
            )
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # a shape, dtype or cuDNN version the kernel does not take: XLA below
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")


def softmax_attention(
    params: Mapping[str, Any],
    x: Array,
    num_heads: int,
    mask: Array | None = None,
    return_maps: bool = False,
    impl: str = "reference",
    rotary_base: float | None = None,
    qk_norm_eps: float | None = None,
    rotary_half: bool = False,
    num_kv_heads: int | None = None,
    grid_rotary: GridRotary | None = None,
):
    """Multi-head softmax self-attention.

    Args:
      params: ``{"q"|"k"|"v"|"out": {"kernel": [D, D], "bias": [D] or None}}``, and with
        qk-norm ``"q_norm"``, ``"k_norm"``: ``{"scale": [d], "bias": [d]}``.
      x: [B, N, D] tokens.
      num_heads: H, head dim d = D / H, scale d^-½.
      mask: optional boolean, broadcastable to [B, H, N, N]; True = may attend.
      return_maps: also return the :class:`AttentionMaps` (a1 = [B, H, N, N]); always through
        the reference path.
      impl: ``"reference"``, ``"fused"`` or ``"fused_xla"`` (module docstring).
      rotary_base: rotate queries and keys (:func:`rotary`, base θ); ``None``: no rotation.
      qk_norm_eps: the eps of the per-head LayerNorm of queries and keys (:func:`head_norm`,
        before any rotation), used when ``params`` has ``"q_norm"``.
      rotary_half: the half-split rotary pairing (:func:`rotary`'s ``half``).
      num_kv_heads: grouped-query attention: k and v have this many heads ([D, kv·d]
        kernels), each shared by ``num_heads / num_kv_heads`` consecutive query heads;
        ``None``: ``num_heads``.
      grid_rotary: the 2-D rotary positions of a ViT's patch grid on queries and keys (after
        any qk-norm; :class:`GridRotary`); ``None``: none.

    Returns:
      [B, N, D] output, and the maps if ``return_maps``.
    """
    _check_input(x, params, num_heads)
    _check_impl(impl)
    b, n, width = x.shape
    d = width // num_heads
    kv = num_heads if num_kv_heads is None else num_kv_heads
    formulation = _formulation(impl, x.dtype, return_maps)
    if formulation is not None:
        q = _tokens_heads(x, params["q"], num_heads)
        k, v = (_kv_heads(x, params[name], num_heads, kv, 2) for name in ("k", "v"))
        q, k = _qk_norm(q, k, params, qk_norm_eps)
        q, k = (_grid_rotate(_rotate(t, rotary_base, 1, rotary_half), grid_rotary, 1)
                for t in (q, k))  # fmt: skip
        o = fused_attention(q, k, v, d**-0.5, mask, formulation)
        return _dense(o.reshape(b, n, width), params["out"])
    q = _heads(x, params["q"], num_heads)
    k, v = (_kv_heads(x, params[name], num_heads, kv, 1) for name in ("k", "v"))
    q, k = _qk_norm(q, k, params, qk_norm_eps)
    q, k = (_grid_rotate(_rotate(t, rotary_base, 2, rotary_half), grid_rotary, 2)
            for t in (q, k))  # fmt: skip
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * d**-0.5, k)
    a = _softmax_wide(logits, mask)
    o = jnp.einsum("bhqk,bhkd->bhqd", a.astype(v.dtype), v)
    o = o.transpose(0, 2, 1, 3).reshape(b, n, width)
    out = _dense(o, params["out"])
    return (out, AttentionMaps(a1=a)) if return_maps else out


def latent_attention(params: Mapping[str, Any], latent: Array, x: Array, num_heads: int) -> Array:
    """Multi-head attention of learnt queries over tokens (timm's ``AttentionPoolLatent``).

    Args:
      params: ``{"q"|"k"|"v"|"out": {"kernel": [D, D], "bias": [D] or None}}``.
      latent: [B, L, D] the query tokens (q is projected from them).
      x: [B, N, D] the tokens attended over (k and v are projected from them).
      num_heads: H, head dim d = D / H, scale d^-½.

    Returns:
      [B, L, D]: the output projection of the attended values.
    """
    b, n_q, width = latent.shape
    q = _heads(latent, params["q"], num_heads)
    k, v = (_heads(x, params[name], num_heads) for name in ("k", "v"))
    d = width // num_heads
    a = _softmax_wide(jnp.einsum("bhqd,bhkd->bhqk", q * d**-0.5, k), None)
    o = jnp.einsum("bhqk,bhkd->bhqd", a.astype(v.dtype), v)
    return _dense(o.transpose(0, 2, 1, 3).reshape(b, n_q, width), params["out"])


def diff_lambda(params: Mapping[str, Any], lambda_init: float, dtype=jnp.float32) -> Array:
    """λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, a scalar computed in ``dtype``."""
    names = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
    w = {name: params[name].astype(dtype) for name in names}
    return (
        jnp.exp(jnp.dot(w["lambda_q1"], w["lambda_k1"]))
        - jnp.exp(jnp.dot(w["lambda_q2"], w["lambda_k2"]))
        + lambda_init
    )


def _sub_layer_norm(o: Array, params: Mapping[str, Any], lambda_init: float) -> Array:
    """The per-head RMSNorm over the last (2d) axis, its scale, and (1 − λ_init)."""
    o = o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + RMS_EPS)
    return o * params["subln_scale"].astype(o.dtype) * (1.0 - lambda_init)


def _fused_diff_heads(
    params: Mapping[str, Any],
    x: Array,
    h: int,
    d: int,
    lambda_init: float,
    mask: Array | None,
    rotary_base: float | None,
    implementation: str,
) -> Array:
    """DA's per-head output before the out projection, by two fused calls: [B, N, h, 2d]."""
    q, k = (_rotate(_tokens_heads(x, params[n], 2 * h), rotary_base, 1) for n in ("q", "k"))
    v = _tokens_heads(x, params["v"], h)
    b, n = x.shape[:2]
    # Sub-heads (2h, 2h+1) are the two branches; zero-padding q and k to the value width 2d
    # adds exact zeros to every logit, so each branch is one call with equal head dims.
    pad = ((0, 0), (0, 0), (0, 0), (0, 0), (0, d))
    q, k = (jnp.pad(t.reshape(b, n, h, 2, d), pad) for t in (q, k))
    o1 = fused_attention(q[..., 0, :], k[..., 0, :], v, d**-0.5, mask, implementation)
    o2 = fused_attention(q[..., 1, :], k[..., 1, :], v, d**-0.5, mask, implementation)
    o1, o2 = _wide(o1), _wide(o2)
    lam = diff_lambda(params, lambda_init, o1.dtype)
    return _sub_layer_norm(o1 - lam * o2, params, lambda_init)


def diff_attention(
    params: Mapping[str, Any],
    x: Array,
    num_heads: int,
    lambda_init: float,
    mask: Array | None = None,
    return_maps: bool = False,
    impl: str = "reference",
    rotary_base: float | None = None,
):
    """Differential Attention.

    Args:
      params: ``{"q"|"k"|"v"|"out": {"kernel": [D, D], "bias": [D] or None},
        "lambda_q1"|"lambda_k1"|"lambda_q2"|"lambda_k2": [d], "subln_scale": [2d]}``.
      x: [B, N, D] tokens.
      num_heads: head count H_base of the parameter-matched softmax baseline (even); DA uses
        H = H_base / 2 DIFF heads, sub-head dim d = D / H_base, value head 2d.
      lambda_init: the layer's λ_init (a Python float, not learned).
      mask: optional boolean, broadcastable to [B, H, N, N]; True = may attend.
      return_maps: also return :class:`AttentionMaps` (a1, a2 = [B, H, N, N], lam = []); always
        through the reference path.
      impl: ``"reference"``, ``"fused"`` or ``"fused_xla"`` (module docstring).
      rotary_base: rotate each q/k sub-head (:func:`rotary`, base θ); ``None``: no rotation.

    Returns:
      [B, N, D] output, and the maps if ``return_maps``.
    """
    _check_input(x, params, num_heads)
    _check_impl(impl)
    b, n, width = x.shape
    if num_heads % 2:
        raise ValueError(f"Differential Attention needs an even num_heads, got {num_heads}")
    h, d = num_heads // 2, width // num_heads
    formulation = _formulation(impl, x.dtype, return_maps)
    if formulation is not None:
        o = _fused_diff_heads(params, x, h, d, lambda_init, mask, rotary_base, formulation)
        return _dense(o.astype(x.dtype).reshape(b, n, width), params["out"])
    q, k = (_rotate(_heads(x, params[name], 2 * h), rotary_base, 2) for name in ("q", "k"))
    v = _heads(x, params["v"], h)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * d**-0.5, k)
    p = _softmax_wide(logits, mask).reshape(b, h, 2, n, n)  # sub-heads (2h, 2h+1) pair up
    a1, a2 = p[:, :, 0], p[:, :, 1]
    lam = diff_lambda(params, lambda_init, a1.dtype)
    a = a1 - lam * a2
    o = _sub_layer_norm(jnp.einsum("bhqk,bhkd->bhqd", a, v.astype(a.dtype)), params, lambda_init)
    o = o.astype(x.dtype).transpose(0, 2, 1, 3).reshape(b, n, width)
    out = _dense(o, params["out"])
    return (out, AttentionMaps(a1=a1, a2=a2, lam=lam)) if return_maps else out


def _linear(width: int, use_bias: bool, rngs: nnx.Rngs, out: int | None = None) -> nnx.Linear:
    return nnx.Linear(
        width,
        width if out is None else out,
        use_bias=use_bias,
        kernel_init=DENSE_INIT,
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def _linear_params(layer: nnx.Linear) -> dict[str, Array | None]:
    return {"kernel": layer.kernel[...], "bias": None if layer.bias is None else layer.bias[...]}


def _check_position_options(causal: Any, rotary_base: Any) -> None:
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True or False, got {causal!r}")
    if rotary_base is not None and not (
        isinstance(rotary_base, int | float)
        and not isinstance(rotary_base, bool)
        and 1 < rotary_base < math.inf
    ):
        raise ValueError(f"rotary_base must be None or a finite number > 1, got {rotary_base!r}")


def _with_causal(mask: Array | None, n: int, causal: bool) -> Array | None:
    if not causal:
        return mask
    return causal_mask(n) if mask is None else mask & causal_mask(n)


class SoftmaxAttention(nnx.Module):
    """Multi-head softmax self-attention (q/k/v/out D→D projections) over [B, N, D].

    ``impl`` (``"reference"``, ``"fused"`` or ``"fused_xla"``) picks the implementation of the
    forward pass (module docstring); the maps (``return_maps=True``) always come from the
    reference path. ``causal`` adds the causal mask to any mask passed in; ``rotary_base``
    rotates queries and keys (:func:`rotary`). ``use_bias`` puts biases on q/k/v and, unless
    ``out_bias`` says otherwise, on the output projection; ``qk_norm_eps`` (not ``None``) adds
    the per-head LayerNorm of queries and keys with that eps (:func:`head_norm`);
    ``rotary_half`` picks the half-split rotary pairing; ``num_kv_heads`` makes it
    grouped-query attention; ``grid_rotary`` turns the patch tokens' queries and keys by
    their 2-D grid positions (:func:`softmax_attention`).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        use_bias: bool = True,
        out_bias: bool | None = None,
        impl: str = "reference",
        causal: bool = False,
        rotary_base: float | None = None,
        qk_norm_eps: float | None = None,
        rotary_half: bool = False,
        num_kv_heads: int | None = None,
        grid_rotary: GridRotary | None = None,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if not isinstance(kv, int) or isinstance(kv, bool) or kv < 1 or num_heads % kv:
            raise ValueError(f"num_kv_heads must divide num_heads {num_heads}, got {kv!r}")
        _check_impl(impl)
        _check_position_options(causal, rotary_base)
        self.num_heads = num_heads
        self.impl = impl
        self.causal = causal
        self.rotary_base = rotary_base
        self.qk_norm_eps = qk_norm_eps
        self.rotary_half = rotary_half
        self.num_kv_heads = num_kv_heads
        self.grid_rotary = grid_rotary
        self.q = _linear(width, use_bias, rngs)
        self.k, self.v = (_linear(width, use_bias, rngs, kv * (width // num_heads))
                          for _ in range(2))  # fmt: skip
        self.out = _linear(width, use_bias if out_bias is None else out_bias, rngs)
        head = width // num_heads
        self.q_norm, self.k_norm = (
            (nnx.LayerNorm(head, epsilon=qk_norm_eps, rngs=rngs) for _ in range(2))
            if qk_norm_eps is not None
            else (None, None)
        )

    def params(self) -> dict[str, Any]:
        """The parameters as the mapping :func:`softmax_attention` takes."""
        p = {n: _linear_params(getattr(self, n)) for n in ("q", "k", "v", "out")}
        if self.q_norm is not None:
            p |= {n: {"scale": getattr(self, n).scale[...], "bias": getattr(self, n).bias[...]}
                  for n in ("q_norm", "k_norm")}  # fmt: skip
        return p

    def __call__(self, x: Array, mask: Array | None = None, return_maps: bool = False):
        mask = _with_causal(mask, x.shape[-2], self.causal)
        return softmax_attention(
            self.params(), x, self.num_heads, mask, return_maps, self.impl, self.rotary_base,
            self.qk_norm_eps, self.rotary_half, self.num_kv_heads, self.grid_rotary,
        )  # fmt: skip


class DiffAttention(nnx.Module):
    """Differential Attention over [B, N, D], parameter-matched to ``SoftmaxAttention(D, H_base)``.

    Holds the four D→D projections, the λ vectors λq1, λk1, λq2, λk2 ([d], N(0, 0.1²)) and the
    shared RMSNorm scale ([2d], ones): 6d parameters more than the softmax module. ``impl``,
    ``causal`` and ``rotary_base`` as for :class:`SoftmaxAttention`.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        lambda_init: float,
        *,
        use_bias: bool = True,
        impl: str = "reference",
        causal: bool = False,
        rotary_base: float | None = None,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        if num_heads % 2:
            raise ValueError(f"Differential Attention needs an even num_heads, got {num_heads}")
        _check_impl(impl)
        _check_position_options(causal, rotary_base)
        d = width // num_heads
        self.num_heads = num_heads
        self.impl = impl
        self.causal = causal
        self.rotary_base = rotary_base
        self.lambda_init = float(lambda_init)
        self.q, self.k, self.v, self.out = (_linear(width, use_bias, rngs) for _ in range(4))
        lam_init = nnx.initializers.normal(stddev=LAMBDA_STD)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, nnx.Param(lam_init(rngs.params(), (d,), jnp.float32)))
        self.subln_scale = nnx.Param(jnp.ones((2 * d,), jnp.float32))

    def params(self) -> dict[str, Any]:
        """The parameters as the mapping :func:`diff_attention` takes."""
        p: dict[str, Any] = {n: _linear_params(getattr(self, n)) for n in ("q", "k", "v", "out")}
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "subln_scale"):
            p[name] = getattr(self, name)[...]
        return p

    def lam(self) -> Array:
        """λ of this layer, [] float32: ``exp(λq1·λk1) − exp(λq2·λk2) + λ_init``."""
        return diff_lambda(self.params(), self.lambda_init)

    def __call__(self, x: Array, mask: Array | None = None, return_maps: bool = False):
        mask = _with_causal(mask, x.shape[-2], self.causal)
        return diff_attention(
            self.params(),
            x,
            self.num_heads,
            self.lambda_init,
            mask,
            return_maps,
            self.impl,
            self.rotary_base,
        )
