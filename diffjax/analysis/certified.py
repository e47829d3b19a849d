"""Certified local Lipschitz bounds over a ball, by interval bound propagation of the Jacobian.

What :mod:`.lipschitz` calls the exact local Lipschitz constant, σmax(J_f(x0)), is one point of
the supremum that a certificate needs; it bounds nothing on a neighbourhood. This module computes

    L̂(x0, r) ≥ sup_{x ∈ B_p(x0, r)} ‖J_f(x)‖₂          (p = 2 or ∞ for the ball; ℓ2 → ℓ2 norm)

for one attention layer (softmax or DA) at its input and for the whole ViT / DiffViT from the
image to the logits or to the logit margins z_c − z_j. The method (proved in docs/certified.md):

1. every intermediate value v(x) of f is enclosed, for all x in the ball, in an interval
   [mid ± rad] (interval bound propagation; the first affine map sees the ball itself, so an
   ℓ2 ball costs r·‖w‖₂ per output, not the r·‖w‖₁ of its bounding box);
2. every intermediate Jacobian column ∂v/∂x_k is enclosed in the same way, by propagating the
   forward-mode derivative rules of each operation in interval arithmetic (products use the
   mid-radius rule |a b − a0 b0| ≤ |a0|·rb + ra·(|b0| + rb));
3. the Jacobian of f is then an interval matrix [M ± R] that contains J_f(x) for every x in the
   ball, and sup ‖J‖₂ ≤ ‖M‖₂ + ‖R‖₂ (R ≥ 0 entrywise, so ‖Δ‖₂ ≤ ‖|Δ|‖₂ ≤ ‖R‖₂ for |Δ| ≤ R).

Every enclosure is centred on the op's float64 value at the mids (the nonlinear ops too, whose
box ends are not symmetric about it), so the value mid is f(x0) and the Jacobian mid is J_f(x0)
for every radius, and L̂ = σmax(J_f(x0)) + ‖R‖₂ up to the SVD's slack. Everything runs in
float64; rounding is absorbed by widening each radius by ``DELTA`` times the magnitude it was
computed from (docs/certified.md, "Rounding"): without that widening every radius is exactly 0
at r = 0; with it, R at r = 0 is the rounding slack as interval arithmetic propagates it.

Scope: the programs model the evaluation-mode float64 ViT / DiffViT of :data:`SCOPE`; any other
configuration (another activation, a later config field at a non-default value, a CLIP tower)
is refused by name rather than bounded as a different function.

A *program* is a function ``program(ball, tangent) -> (value, tangent_out)`` of intervals that
implements f; :func:`jacobian_bounds` runs it over the input's basis vectors in chunks (vmapped,
``lax.map`` over chunks). :func:`attention_program` and :func:`logits_program` are the two maps
of the issue; :func:`certified_radius` turns margin bounds into certified radii.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import optimize, special

from diffjax.analysis.lanczos import singular_values
from diffjax.analysis.lipschitz import top_singular_values
from diffjax.attention import RMS_EPS, DiffAttention, diff_lambda
from diffjax.config import ViTConfig
from diffjax.vit import ViT

Array = jax.Array
Norm = Literal["l2", "linf"]
NORMS = ("l2", "linf")

# Relative widening of every computed radius. A float64 dot product of length n errs by at most
# γ_n·Σ|a_i b_i| with γ_n = n·u/(1 − n·u), u = 2⁻⁵³; DELTA = 2⁻⁴⁰ ≥ 2·γ_n for every contraction
# length n ≤ MAX_CONTRACTION (checked on the model), and also covers the few-ulp errors of exp,
# erf and rsqrt.
DELTA = 2.0**-40
MAX_CONTRACTION = 2048
# Relative slack on a computed spectral norm: LAPACK's SVD is backward stable, each singular value
# within O(n)·u·σmax of the exact one (n ≤ 10⁵ here, so ≤ 10⁻¹¹·σmax).
SPECTRAL_SLACK = 1e-8


@flax.struct.dataclass
class Interval:
    """The box [mid − rad, mid + rad] (elementwise, rad ≥ 0), float64."""

    mid: Array
    rad: Array

    @property
    def lo(self) -> Array:
        return self.mid - self.rad

    @property
    def hi(self) -> Array:
        return self.mid + self.rad

    @property
    def mag(self) -> Array:
        """max |v| over the box, |mid| + rad."""
        return jnp.abs(self.mid) + self.rad

    def __getitem__(self, index) -> Interval:
        return Interval(self.mid[index], self.rad[index])

    def reshape(self, *shape) -> Interval:
        return Interval(self.mid.reshape(*shape), self.rad.reshape(*shape))

    def transpose(self, *axes) -> Interval:
        return Interval(self.mid.transpose(*axes), self.rad.transpose(*axes))


@flax.struct.dataclass
class Ball:
    """The input set B_p(center, radius): ‖x − center‖_p ≤ radius over the whole array."""

    center: Array
    radius: Array
    norm: str = flax.struct.field(pytree_node=False)


def point(x: Array) -> Interval:
    """A point as a zero-radius interval."""
    return Interval(x, jnp.zeros_like(x))


def around(mid: Array, lo: Array, hi: Array) -> Interval:
    """An interval centred on ``mid`` (the op's value at the input's mid) that contains [lo, hi]:
    radius max(hi − mid, mid − lo), widened for its rounding.

    Centring on the value rather than on (lo + hi)/2 keeps every mid the plain float64 evaluation
    of f and its Jacobian at x0, whatever the radii: at r = 0 the enclosure is the exact point
    plus its rounding slack, never a box whose mid has drifted inside that slack.
    """
    rad = jnp.maximum(jnp.maximum(hi - mid, mid - lo), 0.0)
    return Interval(mid, rad + DELTA * (jnp.abs(lo) + jnp.abs(hi) + jnp.abs(mid)))


def mean(a: Interval, axis: int, keepdims: bool = False) -> Interval:
    """The mean over ``axis``: mean of mids, mean of radii plus the sum's rounding."""
    m = functools.partial(jnp.mean, axis=axis, keepdims=keepdims)
    return Interval(m(a.mid), m(a.rad) + DELTA * m(a.mag))


def _sum(mid: Array, rad: Array) -> Interval:
    # One correctly rounded addition errs by at most u·|result| (u = 2⁻⁵³), in mid and in rad.
    return Interval(mid, rad * (1 + DELTA) + DELTA * jnp.abs(mid))


def add(a: Interval, b: Interval) -> Interval:
    return _sum(a.mid + b.mid, a.rad + b.rad)


def sub(a: Interval, b: Interval) -> Interval:
    return _sum(a.mid - b.mid, a.rad + b.rad)


def scale(a: Interval, s) -> Interval:
    """s·a for a point s (scalar or broadcastable array)."""
    return Interval(a.mid * s, a.rad * jnp.abs(s) * (1 + DELTA))


def shift(a: Interval, b: Array) -> Interval:
    """a + b for a point b."""
    return _sum(a.mid + b, a.rad)


def bilinear(op: Callable[[Array, Array], Array], a: Interval, b: Interval) -> Interval:
    """op(a, b) for a bilinear ``op`` with non-negative structure (products and sums of
    products: elementwise multiplication, einsum, matmul).

    For a = a0 + α, b = b0 + β with |α| ≤ ra, |β| ≤ rb:
    |op(a, b) − op(a0, b0)| = |op(a0, β) + op(α, b0) + op(α, β)| ≤ op(|a0|, rb) + op(ra, |b0| + rb).
    """
    mid = op(a.mid, b.mid)
    # Rounding: the computed mid is within γ_n·op(|a0|, |b0|) of the exact one, and the computed
    # radius within γ_n of itself (n the contraction length, γ_n ≤ DELTA/2).
    rad = (op(jnp.abs(a.mid), b.rad) + op(a.rad, b.mag)) * (1 + DELTA)
    return Interval(mid, rad + DELTA * op(jnp.abs(a.mid), jnp.abs(b.mid)))


def mul(a: Interval, b: Interval) -> Interval:
    return bilinear(jnp.multiply, a, b)


def matmul_point(a: Interval, w: Array) -> Interval:
    """a @ w for a point matrix w [in, out], a [..., in]."""
    return Interval(a.mid @ w, a.rad @ jnp.abs(w) + DELTA * (a.mag @ jnp.abs(w)))


def affine(a: Interval, p) -> Interval:
    """A Dense layer (``{"kernel": [in, out], "bias": [out] or None}``) on a [..., in]."""
    y = matmul_point(a, p["kernel"])
    return y if p.get("bias") is None else shift(y, p["bias"])


def _dual_norms(w: Array, norm: str) -> Array:
    """Per output column of w [in, out]: ‖w_col‖_q with q dual to ``norm`` ([out])."""
    return jnp.sqrt(jnp.sum(w * w, 0)) if norm == "l2" else jnp.sum(jnp.abs(w), 0)


def ball_affine(ball: Ball, x: Array, t: Array, w: Array, b: Array | None):
    """The first affine map x ↦ x @ w + b, row by row, on the ball: its value and tangent.

    Every row x_i of x [..., in] moves by ‖δ_i‖_p ≤ ‖δ‖_p ≤ r, so output (i, k) moves by at most
    r·‖w[:, k]‖_q (Hölder, 1/p + 1/q = 1): exact for one row, and much tighter than the bounding
    box for the ℓ2 ball. ``x`` is the (possibly rearranged) center, ``t`` the tangent arranged the
    same way (a point: the map is linear).
    """
    mid = x @ w + (0 if b is None else b)
    mag = jnp.abs(x) @ jnp.abs(w) + (0 if b is None else jnp.abs(b))
    rad = ball.radius * _dual_norms(w, ball.norm) * (1 + DELTA) + DELTA * mag
    tangent = Interval(t @ w, DELTA * (jnp.abs(t) @ jnp.abs(w)))
    return Interval(mid, jnp.broadcast_to(rad, mid.shape)), tangent


# ---------------------------------------------------------------------------------------------
# Elementwise and reduction operations: (value, tangent) → (value, tangent).


def _square(a: Interval) -> Interval:
    lo, hi = a.lo, a.hi
    top = jnp.maximum(lo * lo, hi * hi)
    bottom = jnp.where((lo <= 0) & (hi >= 0), 0.0, jnp.minimum(lo * lo, hi * hi))
    return around(a.mid * a.mid, bottom * (1 - DELTA), top * (1 + DELTA))


def _rsqrt(a: Interval, eps: float) -> Interval:
    """1/√(a + eps) (a ≥ 0 is known: a mean of squares), decreasing."""
    lo, hi = jnp.maximum(a.lo, 0.0) + eps, a.hi + eps
    mid = jax.lax.rsqrt(jnp.maximum(a.mid, 0.0) + eps)
    return around(mid, jax.lax.rsqrt(hi) * (1 - DELTA), jax.lax.rsqrt(lo) * (1 + DELTA))


def _normalise(x: Interval, t: Interval, gain: Array, bias: Array | None, eps: float, center: bool):
    """LayerNorm (``center``) or RMSNorm over the last axis: value and tangent.

    y = g ⊙ c ⊙ ι + b with c = x − mean(x) (LN) or x (RMS), ι = (mean(c²) + eps)^(-1/2);
    dy = g ⊙ (ι ⊙ dc − ι³ c ⟨c, dc⟩ / D).
    """
    d = x.mid.shape[-1]

    def centre(a: Interval) -> Interval:
        if not center:
            return a
        # |Δc_i| ≤ |Δx_i| + |mean Δx| ≤ r_i + mean(r).
        mid = a.mid - jnp.mean(a.mid, -1, keepdims=True)
        return Interval(mid, a.rad + jnp.mean(a.rad, -1, keepdims=True) + DELTA * a.mag)

    c, dc = centre(x), centre(t)
    iota = _rsqrt(mean(_square(c), -1), eps)[..., None]
    iota3 = around(iota.mid**3, iota.lo**3 * (1 - DELTA), iota.hi**3 * (1 + DELTA))
    y = scale(mul(c, iota), gain)
    y = y if bias is None else shift(y, bias)
    inner = scale(bilinear(lambda a, b: jnp.sum(a * b, -1, keepdims=True), c, dc), 1.0 / d)
    dy = scale(sub(mul(dc, iota), mul(mul(c, iota3), inner)), gain)
    return y, dy


def layer_norm(x: Interval, t: Interval, norm) -> tuple[Interval, Interval]:
    """An ``nnx.LayerNorm`` (scale, bias, epsilon) on the last axis."""
    gain = jnp.asarray(norm.scale[...], jnp.float64)
    bias = jnp.asarray(norm.bias[...], jnp.float64)
    return _normalise(x, t, gain, bias, float(norm.epsilon), center=True)


def batch_norm(x: Interval, t: Interval, norm) -> tuple[Interval, Interval]:
    """An evaluation-mode ``nnx.BatchNorm`` on the last axis: the affine map
    y = (x − μ)·g/√(σ² + ε) + b of its running statistics, dy = dx·g/√(σ² + ε)."""
    p = _f64({n: getattr(norm, n)[...] for n in ("mean", "var", "scale", "bias")})
    coef = jax.lax.rsqrt(p["var"] + norm.epsilon) * p["scale"]
    # coef is a few roundings off the exact factor: a point with that much slack.
    coef = Interval(coef, DELTA * jnp.abs(coef))
    return shift(mul(shift(x, -p["mean"]), coef), p["bias"]), mul(t, coef)


# The normalisation module → its interval rule (the modules ViTConfig.norm builds).
NORM_RULES = {nnx.LayerNorm: layer_norm, nnx.BatchNorm: batch_norm}


def normalise(x: Interval, t: Interval, norm) -> tuple[Interval, Interval]:
    """The block's normalisation module ``norm`` (LayerNorm or evaluation-mode BatchNorm)."""
    return NORM_RULES[type(norm)](x, t, norm)


def _gelu(x):
    return x * jax.scipy.special.ndtr(x)


def _gelu_prime(x):
    return jax.scipy.special.ndtr(x) + x * jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# GELU decreases on (−∞, x*) and increases after; GELU' increases on [−√2, √2], decreases outside
# (GELU'' = φ(x)(2 − x²)).
_GELU_ARGMIN = optimize.brentq(
    lambda x: special.ndtr(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi),
    -2.0,
    0.0,
    xtol=1e-15,
)
_GELU_MIN = float(_GELU_ARGMIN * special.ndtr(_GELU_ARGMIN))
_SQRT2 = math.sqrt(2.0)


def gelu(x: Interval, t: Interval) -> tuple[Interval, Interval]:
    """Exact GELU x·Φ(x) elementwise, value and tangent GELU'(x)·dx."""
    lo, hi = x.lo, x.hi
    glo, ghi = _gelu(lo), _gelu(hi)
    inside = (lo <= _GELU_ARGMIN) & (hi >= _GELU_ARGMIN)
    bottom = jnp.where(inside, _GELU_MIN, jnp.minimum(glo, ghi))
    top = jnp.maximum(glo, ghi)
    slack = DELTA * (jnp.abs(bottom) + jnp.abs(top) + 1e-300)
    y = around(_gelu(x.mid), bottom - slack, top + slack)
    plo, phi = _gelu_prime(lo), _gelu_prime(hi)
    dmax = jnp.where((lo <= _SQRT2) & (hi >= _SQRT2), _gelu_prime(_SQRT2), jnp.maximum(plo, phi))
    dmin = jnp.where((lo <= -_SQRT2) & (hi >= -_SQRT2), _gelu_prime(-_SQRT2), jnp.minimum(plo, phi))
    dslack = DELTA * (jnp.abs(dmin) + jnp.abs(dmax))
    return y, mul(around(_gelu_prime(x.mid), dmin - dslack, dmax + dslack), t)


def relu(x: Interval, t: Interval) -> tuple[Interval, Interval]:
    """ReLU max(x, 0) elementwise, value and tangent ReLU'(x)·dx.

    ReLU' is 0 where the box lies below 0, 1 where it lies above, and [0, 1] where it reaches 0
    (both one-sided derivatives: the enclosure holds the Clarke Jacobian at a kink, so the
    mean-value bound of docs/certified.md stays valid across it). The mid is JAX's
    convention at the centre, ReLU'(0) = 0.
    """
    y = around(jnp.maximum(x.mid, 0.0), jnp.maximum(x.lo, 0.0), jnp.maximum(x.hi, 0.0))
    step = lambda v: (v > 0).astype(v.dtype)  # noqa: E731
    return y, mul(around(step(x.mid), step(x.lo), (x.hi >= 0).astype(x.mid.dtype)), t)


# ViTConfig.activation → its interval rule; the activations without one are refused (SCOPE).
ACTIVATION_RULES = {"gelu": gelu, "relu": relu}


def softmax(z: Interval, t: Interval) -> tuple[Interval, Interval]:
    """Softmax over the last axis: value and tangent dp = p ⊙ (dz − ⟨p, dz⟩).

    Value (sound for every z in the box): p_i ≥ 1 / (1 + Σ_{j≠i} exp(u_j − l_i)) and
    p_i ≤ 1 / (1 + Σ_{j≠i} exp(l_j − u_i)), with l, u the box ends; the mid is the same formula
    at the mids, so that a zero-width box gives lo = mid = hi before the rounding slack.
    """
    off = ~jnp.eye(z.mid.shape[-1], dtype=bool)

    def share(zi, zj):
        # 1 / (1 + Σ_{j≠i} exp(zj_j − zi_i)); exp overflow to inf gives the sound bound 0.
        e = jnp.where(off, jnp.exp(zj[..., None, :] - zi[..., :, None]), 0.0)
        return 1 / (1 + jnp.sum(e, -1))

    lo, hi = z.lo, z.hi
    lo_p, hi_p = (1 - 4 * DELTA) * share(lo, hi), jnp.minimum(1.0, (1 + 4 * DELTA) * share(hi, lo))
    p = around(share(z.mid, z.mid), lo_p, hi_p)
    s = bilinear(lambda a, b: jnp.sum(a * b, -1, keepdims=True), p, t)
    return p, mul(p, sub(t, s))


# ---------------------------------------------------------------------------------------------
# Attention, blocks and the ViT.


def _f64(tree):
    return jax.tree.map(lambda a: None if a is None else jnp.asarray(a, jnp.float64), tree)


def _heads(a: Interval, heads: int) -> Interval:
    """[N, heads·e] → [heads, N, e]."""
    n = a.mid.shape[0]
    return a.reshape(n, heads, -1).transpose(1, 0, 2)


def _attention_core(q, k, v, dq, dk, dv, d: int):
    """Per-head maps and their tangents: logits q kᵀ/√d and softmax. q, k [H, N, d]."""
    qk = lambda a, b: jnp.einsum("hqd,hkd->hqk", a, b)  # noqa: E731
    s = scale(bilinear(qk, q, k), d**-0.5)
    ds = scale(add(bilinear(qk, dq, k), bilinear(qk, q, dk)), d**-0.5)
    return softmax(s, ds)


def _mix(p, dp, v, dv):
    """O = P V and dO = dP V + P dV, [H, N, e]."""
    pv = lambda a, b: jnp.einsum("hqk,hkd->hqd", a, b)  # noqa: E731
    return bilinear(pv, p, v), add(bilinear(pv, dp, v), bilinear(pv, p, dv))


def attention(attn, u: Interval, du: Interval, qkv=None):
    """A SoftmaxAttention or DiffAttention module on u [N, D] (value, tangent).

    ``qkv``: the three projections of u already computed (the ball's first affine map), else
    they are computed from u here.
    """
    p = _f64(attn.params())
    n, width = u.mid.shape
    heads = attn.num_heads
    d = width // heads
    if qkv is None:
        qkv = tuple(
            (affine(u, p[name]), matmul_point(du, p[name]["kernel"])) for name in ("q", "k", "v")
        )
    (q, dq), (k, dk), (v, dv) = qkv
    if isinstance(attn, DiffAttention):
        h = heads // 2
        q, dq, k, dk = (_heads(a, 2 * h) for a in (q, dq, k, dk))
        v, dv = _heads(v, h), _heads(dv, h)
        pr, dpr = _attention_core(q, k, v, dq, dk, dv, d)
        lam = diff_lambda(p, attn.lambda_init, jnp.float64)
        pair = lambda a: a.reshape(h, 2, n, n)  # noqa: E731  sub-heads (2h, 2h+1) pair up
        pr, dpr = pair(pr), pair(dpr)
        a = sub(pr[:, 0], scale(pr[:, 1], lam))
        da = sub(dpr[:, 0], scale(dpr[:, 1], lam))
        o, do = _mix(a, da, v, dv)
        gain = p["subln_scale"] * (1.0 - attn.lambda_init)
        o, do = _normalise(o, do, gain, None, RMS_EPS, center=False)
    else:
        q, dq, k, dk, v, dv = (_heads(a, heads) for a in (q, dq, k, dk, v, dv))
        pr, dpr = _attention_core(q, k, v, dq, dk, dv, d)
        o, do = _mix(pr, dpr, v, dv)
    merge = lambda a: a.transpose(1, 0, 2).reshape(n, width)  # noqa: E731
    o, do = merge(o), merge(do)
    return affine(o, p["out"]), matmul_point(do, p["out"]["kernel"])


def _dense_module(layer, x: Interval, t: Interval):
    p = _f64({"kernel": layer.kernel[...], "bias": None if layer.bias is None else layer.bias[...]})
    return affine(x, p), matmul_point(t, p["kernel"])


def block(blk, h: Interval, dh: Interval) -> tuple[Interval, Interval]:
    """One pre-norm block (eval mode): value and tangent of h ↦ h_next, [N, D]."""
    u, du = normalise(h, dh, blk.norm1)
    a, da = attention(blk.attn, u, du)
    h, dh = add(h, a), add(dh, da)
    m, dm = normalise(h, dh, blk.norm2)
    m, dm = _dense_module(blk.fc1, m, dm)
    m, dm = ACTIVATION_RULES[blk.activation](m, dm)
    m, dm = _dense_module(blk.fc2, m, dm)
    return add(h, m), add(dh, dm)


Program = Callable[[Ball, Array], tuple[Interval, Interval]]


# The ViTConfig fields the programs propagate exactly, each with the values they model (None:
# every valid value). A field missing here (one added to ViTConfig later, say) is refused at any
# value other than its default: nothing is bounded that the programs do not compute.
SCOPE: dict[str, tuple | None] = {
    **dict.fromkeys(
        (
            "image_size",
            "patch_size",
            "channels",
            "num_classes",
            "width",
            "depth",
            "num_heads",
            "mlp_ratio",
            "attention",
            "diff_layers",
            "lambda_init",
            "qkv_bias",
            "layer_norm_eps",
            "mean",
            "std",
            "ln_pre",
            "patch_bias",
            "distillation",
            "norm",
        ),
    ),  # fmt: skip
    "pool": ("cls", "mean"),
    # Training-time switches: the evaluation-mode function is the same whatever their value.
    "dropout": None,
    "remat": None,
    "activation": tuple(ACTIVATION_RULES),
    "dtype": ("float64",),
    "attention_impl": ("reference",),
    "scan_layers": (False,),
}
# What to do about a refused value, where there is something to do.
_REMEDY = {
    "dtype": "analysis.with_dtype(model, 'float64')",
    "attention_impl": "analysis.with_dtype(model, 'float64')",
    "scan_layers": "the per-layer model: diffjax.vit.relayout(model, False)",
}


def _check_model(model: ViT) -> None:
    """Refuse what the programs do not compute exactly: anything but a :class:`ViT` itself (a
    CLIP image tower is a subclass with another head), a config outside :data:`SCOPE`, a
    BatchNorm in training mode, or a contraction too long for the rounding argument."""
    if type(model) is not ViT:
        raise TypeError(f"certified bounds model a diffjax ViT exactly, got {type(model).__name__}")
    c = model.config
    defaults = ViTConfig()
    for field in dataclasses.fields(c):
        value = getattr(c, field.name)
        allowed = SCOPE.get(field.name, (getattr(defaults, field.name),))
        if allowed is not None and value not in allowed:
            remedy = _REMEDY.get(field.name)
            raise ValueError(
                f"certified bounds do not model ViTConfig.{field.name}={value!r} (they model "
                f"{', '.join(map(repr, allowed))})" + (f"; use {remedy}" if remedy else "")
            )
    if c.num_classes < 1:
        raise ValueError(
            "certified bounds need a classifier head: ViTConfig.num_classes=0 (a headless "
            "backbone) has no logits to certify"
        )
    training = [n for n, m in nnx.iter_modules(model)
                if isinstance(m, nnx.BatchNorm) and not m.use_running_average]  # fmt: skip
    if training:
        raise ValueError(
            f"BatchNorm in training mode (batch statistics) at {training[0]}: certified bounds "
            "model the evaluation-mode map; call model.eval()"
        )
    longest = max(c.patch_size**2 * c.channels, c.width, int(round(c.width * c.mlp_ratio)),
                  c.num_tokens)  # fmt: skip
    if longest > MAX_CONTRACTION:
        raise ValueError(
            f"a contraction of length {longest} exceeds MAX_CONTRACTION = {MAX_CONTRACTION}, the "
            "longest for which the rounding slack DELTA is argued (docs/certified.md)"
        )


def attention_program(model: ViT, layer: int) -> Program:
    """f(u) = Attn_l(u) on the attention input u = LN1(h_l) [N, D] → [N, D]."""
    _check_model(model)
    if not 0 <= layer < model.config.depth:
        raise ValueError(f"layer {layer} outside 0..{model.config.depth - 1}")
    attn = model.blocks[layer].attn

    def program(ball: Ball, t: Array):
        p = _f64(attn.params())
        qkv = tuple(
            ball_affine(ball, ball.center, t, p[n]["kernel"], p[n]["bias"]) for n in ("q", "k", "v")
        )
        zero = point(jnp.zeros_like(ball.center))
        return attention(attn, point(ball.center), zero, qkv=qkv)

    return program


def logits_program(model: ViT, label: Array | int | None = None) -> Program:
    """f(image) = logits [K] of one image [H, W, C]; with ``label`` c, the margins
    z_c − z_j [K] (the entry j = c is identically 0), through the head's weight differences.
    """
    _check_model(model)
    c = model.config
    g, ps = c.image_size // c.patch_size, c.patch_size

    def patches(x):
        x = x.reshape(g, ps, g, ps, c.channels).transpose(0, 2, 1, 3, 4)
        return x.reshape(g * g, ps * ps * c.channels)

    def program(ball: Ball, t: Array):
        # Normalisation and the patch embedding are one affine map of the raw pixels:
        # ((x − μ)/σ) W + b = x (W/σ) + (b − (μ/σ) W), σ and μ tiled over the (ph, pw, c) rows.
        embed = model.patch_embed
        kernel = jnp.asarray(embed.kernel[...], jnp.float64)
        bias = 0.0 if embed.bias is None else jnp.asarray(embed.bias[...], jnp.float64)
        mu = jnp.tile(jnp.asarray(c.mean, jnp.float64), ps * ps)
        std = jnp.tile(jnp.asarray(c.std, jnp.float64), ps * ps)
        w = kernel / std[:, None]
        b = bias - (mu / std) @ kernel
        tok, dtok = ball_affine(ball, patches(ball.center), patches(t), w, b)
        # The prefix tokens (CLS, and DIST with distillation) do not depend on the image.
        prefix = [model.cls_token] + ([model.dist_token] if c.distillation else [])
        prefix = jnp.concatenate([jnp.asarray(p[...], jnp.float64)[0] for p in prefix])
        pad = ((c.num_prefix_tokens, 0), (0, 0))
        pos = jnp.asarray(model.pos_embed[...], jnp.float64)[0]
        h = shift(Interval(jnp.concatenate([prefix, tok.mid]), jnp.pad(tok.rad, pad)), pos)
        dh = Interval(jnp.pad(dtok.mid, pad), jnp.pad(dtok.rad, pad))
        if c.ln_pre:
            h, dh = normalise(h, dh, model.ln_pre)
        for blk in model.blocks:
            h, dh = block(blk, h, dh)
        head = _f64({"kernel": model.head.kernel[...], "bias": model.head.bias[...]})
        if c.pool == "mean":  # the norm of the patch tokens' mean
            h, dh = normalise(mean(h[c.num_prefix_tokens :], 0), mean(dh[c.num_prefix_tokens :], 0),
                              model.norm)  # fmt: skip
        else:
            # The CLS token, [D] (CLS and DIST side by side with distillation, [2D]).
            h, dh = normalise(h, dh, model.norm)
            n = c.num_prefix_tokens
            h, dh = h[:n].reshape(-1), dh[:n].reshape(-1)
        if c.distillation:
            # (head(CLS) + head_dist(DIST))/2 = [CLS, DIST] @ [W; W_dist]/2 + (b + b_dist)/2.
            dist = _f64({"kernel": model.head_dist.kernel[...], "bias": model.head_dist.bias[...]})
            head = {
                "kernel": 0.5 * jnp.concatenate([head["kernel"], dist["kernel"]]),
                "bias": 0.5 * (head["bias"] + dist["bias"]),
            }
        if label is not None:
            # z_c − z_j = h·(w_c − w_j) + (b_c − b_j): one affine map, no interval subtraction.
            head = {
                "kernel": head["kernel"][:, label, None] - head["kernel"],
                "bias": head["bias"][label] - head["bias"],
            }
        return affine(h, head), matmul_point(dh, head["kernel"])

    return program


# ---------------------------------------------------------------------------------------------
# The driver and the spectral bound.


@flax.struct.dataclass
class JacobianBounds:
    """Enclosures over a ball of f and of its Jacobian.

    Attributes:
      value: f(x) ∈ value for every x in the ball, [m] (f's output flattened).
      jacobian: J_f(x) ∈ jacobian for every x in the ball, [m, n] (n = input size).
    """

    value: Interval
    jacobian: Interval


def make_ball(center: Array, radius, norm: Norm) -> Ball:
    """A validated float64 ball (radius ≥ 0, finite center, norm ``"l2"`` or ``"linf"``)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    center = jnp.asarray(center)
    if center.dtype != jnp.float64:
        raise ValueError(
            f"certified bounds run in float64 (inside jax.enable_x64), got a {center.dtype} "
            "input; convert the model with analysis.with_dtype(model, 'float64')"
        )
    radius = jnp.asarray(radius, jnp.float64)
    if not isinstance(center, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(center))):
        raise ValueError("the ball's center has non-finite entries")
    if not isinstance(radius, jax.core.Tracer):
        if not (radius.ndim == 0 and float(radius) >= 0 and math.isfinite(float(radius))):
            raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    return Ball(center, radius, norm)


def jacobian_bounds(program: Program, ball: Ball, *, chunk: int = 64) -> JacobianBounds:
    """Run ``program`` over every basis direction of the input, ``chunk`` at a time.

    The value enclosure does not depend on the direction, so each chunk recomputes it (cheap next
    to the [chunk, ...] tangents) and the chunks stay independent: memory O(chunk · size of f's
    intermediates). Traceable; jit it with the program closed over.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    shape, n = ball.center.shape, ball.center.size
    chunk = min(chunk, n)
    steps = -(-n // chunk)
    value, _ = program(ball, jnp.zeros(shape, jnp.float64))

    def directions(ids):
        def one(i):
            # one_hot of an index ≥ n is all zeros: the padded tail adds nothing (dropped below).
            e = jax.nn.one_hot(i, n, dtype=jnp.float64).reshape(shape)
            _, t = program(ball, e)
            return t.reshape(-1)

        return jax.vmap(one)(ids)

    cols = jax.lax.map(directions, jnp.arange(steps * chunk).reshape(steps, chunk))
    jac = cols.reshape(steps * chunk, -1)[:n].transpose()
    return JacobianBounds(value.reshape(-1), jac)


def spectral_norm_upper(a: Array) -> Array:
    """An upper bound on ‖a‖₂ of a materialised matrix: the SVD's σ1 × (1 + SPECTRAL_SLACK)."""
    return singular_values(a)[0] * (1 + SPECTRAL_SLACK)


def lipschitz_upper(jac: Interval) -> Array:
    """sup over J ∈ [M ± R] of ‖J‖₂ ≤ ‖M‖₂ + ‖R‖₂."""
    return spectral_norm_upper(jac.mid) + spectral_norm_upper(jac.rad)


def certified_lipschitz(program: Program, center: Array, radius, norm: Norm = "l2", *,
                        chunk: int = 64) -> Array:  # fmt: skip
    """L̂(x0, r) ≥ sup_{x ∈ B_norm(x0, r)} ‖J_f(x)‖₂ for f given by ``program``."""
    return lipschitz_upper(
        jacobian_bounds(program, make_ball(center, radius, norm), chunk=chunk).jacobian
    )


# ---------------------------------------------------------------------------------------------
# Certified radii from margin bounds.


@flax.struct.dataclass
class RadiusCertificate:
    """A certified radius of one example.

    Attributes:
      radius: [] the prediction provably equals ``label`` on B_norm(x, radius) (0: nothing
        certified, in particular when x is misclassified).
      by_interval: [] the largest grid radius R whose margin enclosure is positive (IBP).
      by_gradient: [] max over the grid of min(R, min_j m_j / sup_{B(x,R)} ‖∇(z_c − z_j)‖_q).
      margin: [] the margin z_c − max_{j≠c} z_j at x.
    """

    radius: Array
    by_interval: Array
    by_gradient: Array
    margin: Array


def _margin_radius(bounds: JacobianBounds, margins: Array, label, grid_r, norm: str):
    k = margins.shape[0]
    others = jnp.arange(k) != label
    ibp_ok = jnp.all(jnp.where(others, bounds.value.lo > 0, True))
    mag = bounds.jacobian.mag  # [K, n]: sup |∂g_j/∂x_i| over the ball
    dual = jnp.sqrt(jnp.sum(mag * mag, 1)) if norm == "l2" else jnp.sum(mag, 1)
    dual = dual * (1 + DELTA)
    # The margin at the center is a float64 evaluation: shrink it by the rounding slack.
    m = margins - DELTA * jnp.abs(margins) - DELTA
    per_pair = jnp.where(others, jnp.where(dual > 0, m / dual, jnp.inf), jnp.inf)
    grad = jnp.minimum(grid_r, jnp.maximum(jnp.min(per_pair), 0.0))
    return jnp.where(ibp_ok, grid_r, 0.0), grad


def certified_radius(model: ViT, image: Array, label, norm: Norm = "l2", *, radii,
                     chunk: int = 64) -> RadiusCertificate:  # fmt: skip
    """The largest certified radius of one image over a grid of candidate ball radii.

    For each candidate R the margins g_j = z_c − z_j and their gradients are enclosed over
    B_norm(image, R); R is certified when every g_j (j ≠ c) is positive on the whole ball
    (interval), and min(R, min_j g_j(x)/sup‖∇g_j‖_q) is certified by the mean-value theorem
    (q = 2 for ℓ2, q = 1 for ℓ∞; Hein & Andriushchenko 2017). Each candidate is a certificate on
    its own, so the best over the grid is one too.

    Args:
      model: a float64 per-layer ViT / DiffViT.
      image: [H, W, C] float64.
      label: the true class (a misclassified image certifies radius 0).
      radii: increasing candidate radii R > 0 (a 1-d array), pixel units.
    """
    radii = np.asarray(radii, np.float64)  # a concrete grid (the candidates are static)
    if (
        radii.ndim != 1
        or radii.size == 0
        or not np.all(radii > 0)
        or not np.all(np.isfinite(radii))
    ):
        raise ValueError(f"radii must be a non-empty 1-d array of finite radii > 0, got {radii}")
    radii = jnp.asarray(radii)
    program = logits_program(model, label)
    make_ball(image, 0.0, norm)  # validates dtype, norm and values
    center_margins = program(Ball(image, jnp.zeros((), jnp.float64), norm), jnp.zeros_like(image))
    margins = center_margins[0].mid
    k = margins.shape[0]
    margin = jnp.min(jnp.where(jnp.arange(k) != label, margins, jnp.inf))

    def at(r):
        bounds = jacobian_bounds(program, Ball(image, r, norm), chunk=chunk)
        return _margin_radius(bounds, margins, label, r, norm)

    ibp, grad = jax.lax.map(at, radii)
    ok = margin > 0
    by_interval = jnp.where(ok, jnp.max(ibp), 0.0)
    by_gradient = jnp.where(ok, jnp.max(grad), 0.0)
    return RadiusCertificate(
        jnp.maximum(by_interval, by_gradient), by_interval, by_gradient, margin
    )


# ---------------------------------------------------------------------------------------------
# The other side: the largest σmax(J(x)) an optimiser finds in the ball (a lower bound on sup).


def project_ball(x: Array, center: Array, radius, norm: str) -> Array:
    """The point of B_norm(center, radius) nearest x (ℓ2: radial; ℓ∞: clipping)."""
    delta = x - center
    if norm == "l2":
        n = jnp.linalg.norm(delta.ravel())
        return center + delta * jnp.minimum(1.0, radius / jnp.maximum(n, 1e-300))
    return center + jnp.clip(delta, -radius, radius)


def max_sigma_pgd(f: Callable[[Array], Array], center: Array, radius, norm: Norm = "l2", *,
                  steps: int, key: Array, step_size: float = 0.25,
                  max_iters: int = 60) -> tuple[Array, Array]:  # fmt: skip
    """Maximise σmax(J_f(x)) over x ∈ B_norm(center, radius) by projected gradient ascent.

    σmax at x comes from Lanczos (:func:`.lipschitz.top_singular_values`) with its top triplet
    (u, v); ∇_x σmax = ∇_x uᵀ J_f(x) v for a simple top singular value, one JVP inside a VJP.
    Steps: ℓ2 normalised, ℓ∞ signed, of ``step_size``·radius decaying linearly; the best point is
    kept. Returns (σmax at the best point, that point), a *lower* bound on the supremum.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k0, k1 = jax.random.split(key)

    def sigma(x, k):
        r = top_singular_values(f, x, k=1, key=k, max_iters=max_iters)
        return r.values[0], r.left[0], r.right[0]

    def step(i, state):
        x, best_x, best = state
        s, u, v = sigma(x, jax.random.fold_in(k1, i))
        better = s > best
        best_x, best = jnp.where(better, x, best_x), jnp.where(better, s, best)
        u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v.reshape(x.shape))
        g = jax.grad(lambda y: jnp.vdot(u, jax.jvp(f, (y,), (v,))[1].ravel()))(x)
        eta = step_size * radius * (1 - i / steps)
        if norm == "l2":
            x = x + eta * g / jnp.maximum(jnp.linalg.norm(g.ravel()), 1e-300)
        else:
            x = x + eta * jnp.sign(g)
        return project_ball(x, center, radius, norm), best_x, best

    if norm == "l2":
        d = jax.random.normal(k0, center.shape, center.dtype)
        x0 = center + 0.5 * radius * d / jnp.linalg.norm(d.ravel())
    else:
        x0 = center + 0.5 * radius * jax.random.rademacher(k0, center.shape, center.dtype)
    x, best_x, best = jax.lax.fori_loop(
        0, steps, step, (x0, center, jnp.asarray(-jnp.inf, center.dtype))
    )
    s, _, _ = sigma(x, k1)
    best_x = jnp.where(s > best, x, best_x)
    return jnp.maximum(s, best), best_x
