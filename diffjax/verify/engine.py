"""Bound propagation over a :class:`~diffjax.verify.program.Program`: IBP, CROWN (backward
linear bounds), CROWN-IBP and alpha-CROWN, for one input set (vmap it over examples).

The input set is B_p(x0, ε) ∩ [0, 1]^d. Its box (ℓ∞ ball ∩ pixel box; for ℓ2 the ℓ∞ ball of the
same radius, which contains the ℓ2 ball) starts IBP; a linear lower bound A·x + b of anything is
concretised as the minimum of A·x over the box (Σ A⁺·lo + A⁻·hi), and for ℓ2 as the better of that
and the ℓ2-ball minimum A·x0 − ε‖A‖₂ (both sound). A :class:`ProductSet` (the point and the
tangent of a JVP, :mod:`diffjax.verify.lipschitz`) is concretised part by part.

Rounding (float64 path): every backward step also propagates absolute coefficients |Λ| through
the absolute operations, giving a bound ``mag`` on the magnitude of every term of the final
A·x + b. Each step's rounding errs by at most DELTA times the magnitudes it sums (ops.base), and
the errors of all steps add up, so subtracting (steps + 2)·DELTA·mag (scaled up for contractions
longer than 2¹²) from the computed bound leaves a bound on the exact real one. The float32 path
skips this: it is fast and close, not rounding-sound.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.verify.ops import DELTA, Linear
from diffjax.verify.ops.base import positive_part, sanitize
from diffjax.verify.program import MAX_CONTRACTION, Program


@dataclasses.dataclass(frozen=True)
class InputSet:
    """B_norm(center, eps) ∩ box and its enclosing box [lo, hi] (one example); the box is
    [0, 1]^d for pixels, or none (ℝ^d) for a layer's input or a tangent."""

    center: jax.Array
    eps: jax.Array
    norm: str
    lo: jax.Array
    hi: jax.Array


@dataclasses.dataclass(frozen=True)
class ProductSet:
    """S_0 × S_1 × … for an input stacked as [k, *shape] (part i in ``parts[i]``), e.g. the
    point and the tangent (x, v) of a Jacobian-vector product. A linear function separates over
    a product, so its minimum is the sum of the parts' minima."""

    parts: tuple[InputSet, ...]

    @property
    def lo(self):
        return jnp.stack([p.lo for p in self.parts])

    @property
    def hi(self):
        return jnp.stack([p.hi for p in self.parts])


def input_set(center, eps, norm: str, box: bool = True) -> InputSet:
    """B_norm(center, eps), intersected with [0, 1]^d when ``box`` (pixels)."""
    slack = DELTA * (jnp.abs(center) + eps)
    lo, hi = center - eps - slack, center + eps + slack
    if box:
        lo, hi = jnp.clip(lo, 0.0, 1.0), jnp.clip(hi, 0.0, 1.0)
    return InputSet(center, eps, norm, lo, hi)


def slack_factor(prog: Program, rounding: bool, d_in: int) -> float:
    """The multiple of ``mag`` subtracted from a concretised bound (0 without rounding)."""
    if not rounding:
        return 0.0
    longest = max(prog.contraction, d_in)
    return DELTA * max(1.0, longest / MAX_CONTRACTION) * (len(prog.nodes) + 2)


def _minimum(a, a_abs, s: InputSet):
    """(min of A·x over the set, the magnitude of its terms) per row [S]."""
    axes = tuple(range(1, a.ndim))
    val = jnp.sum(jnp.maximum(a, 0) * s.lo + jnp.minimum(a, 0) * s.hi, axes)
    mag = jnp.sum(a_abs * jnp.maximum(jnp.abs(s.lo), jnp.abs(s.hi)), axes)
    if s.norm == "l2":
        ball = jnp.sum(a * s.center, axes) - s.eps * jnp.sqrt(jnp.sum(a * a, axes))
        val = jnp.maximum(val, ball)
        mag = mag + s.eps * jnp.sqrt(jnp.sum(a_abs * a_abs, axes))
        mag = mag + jnp.sum(a_abs * jnp.abs(s.center), axes)
    return val, mag


def concretize(res, s: InputSet | ProductSet, factor: float):
    """Lower bounds [S] of A·x + b over the input set from a backward result."""
    a, a_abs, bias, bias_abs = res
    if isinstance(s, ProductSet):
        parts = [_minimum(a[:, i], a_abs[:, i], p) for i, p in enumerate(s.parts)]
        val, mag = sum(v for v, _ in parts), sum(m for _, m in parts)
    else:
        val, mag = _minimum(a, a_abs, s)
    low = val + bias - factor * (mag + bias_abs)
    return jnp.where(jnp.isnan(low), -jnp.inf, low)


def _identity_spec(shape, dtype):
    n = 1
    for k in shape:
        n *= k
    eye = jnp.eye(n, dtype=dtype)
    return jnp.concatenate([eye, -eye]).reshape(2 * n, *shape)


def affine_base(prog: Program) -> int:
    """The variable every later node reaches the input through, when the program starts with
    affine nodes only (the patch embedding): CROWN keeps linear bounds in its coordinates
    (``backward(..., base=...)``) and maps them to the input once (:func:`to_input`), so the
    substitutions of intermediate passes multiply [rows, n] by [n, |base|], not by [n, |x|]
    (544 against 3,072 numbers for a 32×32 RGB image in 17 tokens of width 32). The same linear
    functions, composed in another order. 0 (the input itself) when there is no such prefix.
    """
    best = 0
    for p, node in enumerate(prog.nodes):
        if not isinstance(node.op, Linear):
            break
        made = {n.out for n in prog.nodes[: p + 1]} | {0}
        later = {v for n in prog.nodes[p + 1 :] for v in (*n.ins, *n.reads)}
        if later & made == {node.out} and prog.output != node.out:
            best = node.out
    if best and np.prod(prog.shapes[best]) >= np.prod(prog.shapes[0]):
        return 0
    return best


def backward(prog: Program, target: int, spec, bounds, params=None, stop=None, base: int = 0,
             spec_abs=None):  # fmt: skip
    """(A, |A|, b, |b|) with spec·v_target ≥ A·v_base + b on the input set.

    ``spec`` [S, *shape]; ``bounds`` every variable's interval; ``params`` {node index: the
    op's alpha parameter}; ``stop`` {variable: its own backward result for the spec [I; −I],
    in the same ``base``} substitutes that variable's linear bounds instead of going further
    back; ``base`` the variable the bounds are expressed in (0: the input; else
    :func:`affine_base`, then :func:`to_input` maps them to the input); ``spec_abs`` the
    magnitudes carried with ``spec`` (default |spec|).
    """
    lam = {target: spec}
    lam_abs = {target: jnp.abs(spec) if spec_abs is None else spec_abs}
    rows = spec.shape[0]
    bias = jnp.zeros(rows, spec.dtype)
    bias_abs = jnp.zeros(rows, spec.dtype)
    x_shape = prog.shapes[base]
    a_in = jnp.zeros((rows, *x_shape), spec.dtype)
    a_in_abs = jnp.zeros((rows, *x_shape), spec.dtype)
    for idx in reversed(range(prog.producer(target) + 1)):
        node = prog.nodes[idx]
        if node.out not in lam:
            continue
        lm, la = lam.pop(node.out), lam_abs.pop(node.out)
        if base and node.out == base:
            a_in, a_in_abs = a_in + lm, a_in_abs + la
            break
        if stop is not None and node.out in stop:
            a, aa, b, ba = stop[node.out]
            n = b.shape[0] // 2
            flat, flat_abs = lm.reshape(rows, n), la.reshape(rows, n)
            pos, neg = jnp.maximum(flat, 0), -jnp.minimum(flat, 0)
            a2 = a.reshape(2 * n, -1)
            a_in = a_in + (pos @ a2[:n] + neg @ a2[n:]).reshape(a_in.shape)
            aa2 = aa.reshape(2 * n, -1)
            a_in_abs = a_in_abs + (flat_abs @ (aa2[:n] + aa2[n:])).reshape(a_in.shape)
            bias = bias + pos @ b[:n] + neg @ b[n:]
            bias_abs = bias_abs + flat_abs @ (ba[:n] + ba[n:])
            continue
        param = None if params is None else params.get(idx)
        ins = [bounds[v] for v in (*node.ins, *node.reads)]
        cts, cts_abs, b, ba = node.op.backward(lm, la, ins, param)
        bias, bias_abs = bias + b, bias_abs + ba
        for v, c, ca in zip(node.ins, cts, cts_abs, strict=True):
            if v == 0:
                a_in, a_in_abs = a_in + c, a_in_abs + ca
            elif v in lam:
                lam[v], lam_abs[v] = lam[v] + c, lam_abs[v] + ca
            else:
                lam[v], lam_abs[v] = c, ca
    return a_in, a_in_abs, bias, bias_abs


def to_input(prog: Program, res, base: int, bounds):
    """A :func:`backward` result in ``base``'s coordinates, in the input's (the affine prefix
    applied once)."""
    if not base:
        return res
    a, a_abs, b, b_abs = res
    a, a_abs, b2, b2_abs = backward(prog, base, a, bounds, spec_abs=a_abs)
    return a, a_abs, b + b2, b_abs + b2_abs


def relaxed_inputs(prog: Program) -> set[int]:
    """Variables whose bounds some relaxation needs (inputs of nonlinear operations)."""
    return {v for n in prog.nodes if not isinstance(n.op, Linear) for v in n.ins if v != 0}


def checkpoints(prog: Program) -> set[int]:
    """Variables read by several nodes (the residual stream, a LayerNorm's input and mean, …):
    their linear bounds are kept, and later backward passes for intermediate bounds stop there."""
    readers: dict[int, int] = {}
    for n in prog.nodes:
        for v in set(n.ins):
            readers[v] = readers.get(v, 0) + 1
    return {v for v, k in readers.items() if k > 1 and v != 0}


def pairdiff_bounds(res, zshape, axis: int, s: InputSet, factor: float):
    """Bounds of t[..., i, j] = z_j − z_i (the softmax axis moved last) from z's backward result
    for [I; −I]: z_j − z_i ≥ (A_lo[j] − A_up[i])·x + b_lo[j] − b_up[i], concretised row by row
    (``lax.map`` over the softmax rows: [N, N, d] at a time, never [N³, d])."""
    a, a_abs, b, b_abs = res
    n = b.shape[0] // 2
    k = zshape[axis]

    def rows(arr):  # [2n, ...] → lower and upper halves as [rows, N, ...]
        lo, hi = (jnp.moveaxis(h.reshape(*zshape, *h.shape[1:]), axis, len(zshape) - 1)
                  for h in (arr[:n], arr[n:]))  # fmt: skip
        return lo.reshape(-1, k, *arr.shape[1:]), hi.reshape(-1, k, *arr.shape[1:])

    (al, au), (aal, aau), (bl, bu), (bal, bau) = map(rows, (a, a_abs, b, b_abs))

    def one(row):
        al, au, aal, aau, bl, bu, bal, bau = row
        # z_j ≥ al[j]·x + bl[j] and −z_i ≥ au[i]·x + bu[i] (the −I rows): their sum bounds t_ij.
        low = (al[None] + au[:, None], aal[None] + aau[:, None], bl[None] + bu[:, None],
               bal[None] + bau[:, None])  # fmt: skip
        # −t_ij = z_i − z_j ≥ al[i]·x + bl[i] + au[j]·x + bu[j].
        high = (al[:, None] + au[None], aal[:, None] + aau[None], bl[:, None] + bu[None],
                bal[:, None] + bau[None])  # fmt: skip
        flat = [(x.reshape(k * k, *x.shape[2:])) for x in (*low, *high)]
        lo = concretize(tuple(flat[:4]), s, factor).reshape(k, k)
        hi = -concretize(tuple(flat[4:]), s, factor).reshape(k, k)
        return lo, hi

    lo, hi = jax.lax.map(one, (al, au, aal, aau, bl, bu, bal, bau))
    moved = tuple(np.delete(np.asarray(zshape), axis)) + (k, k)
    return lo.reshape(moved), hi.reshape(moved)


def intermediate_bounds(prog: Program, s: InputSet, method: str, factor: float, full: bool = False):
    """Every variable's interval: IBP, intersected with CROWN's where a relaxation needs it
    (``method`` ``"crown"``/``"alpha-crown"``).

    CROWN's backward pass for an intermediate variable substitutes the linear bounds already
    computed for the checkpoints (:func:`checkpoints`) instead of going back to the input: the
    linear bounds of a checkpoint hold on the whole input set, so this is sound, and it keeps the
    program linear in depth (a full backward pass per variable is quadratic). Softmax's pairwise
    differences z_j − z_i are bounded from the logits' linear bounds (:func:`pairdiff_bounds`),
    so the noise shared by a row cancels; its denominator and output then by intervals.

    ``full``: every pass goes back to the input through every relaxation (no substitution at
    the checkpoints), and softmax's denominators and outputs get CROWN passes too, as
    auto_LiRPA's CROWN does: tighter (a substituted checkpoint bounds each of its neurons
    alone, so the signs of later coefficients cannot cancel across them), quadratic in depth.
    """
    bounds = {0: (s.lo, s.hi)}
    crown = method in ("crown", "alpha-crown")
    need = relaxed_inputs(prog) - (set() if full else prog.interval_only) if crown else set()
    keep = (set() if full else checkpoints(prog)) | {z for z, _ in prog.pairdiff.values()}
    keep = keep if crown else set()
    stored: dict[int, tuple] = {}  # in the coordinates of ``base``
    dtype = s.lo.dtype
    base = affine_base(prog) if crown else 0
    for node in prog.nodes:
        lo, hi = sanitize(*node.op.interval(*[bounds[v] for v in (*node.ins, *node.reads)]))
        if node.out in prog.pairdiff and crown:
            z, axis = prog.pairdiff[node.out]
            res = to_input(prog, stored[z], base, bounds)
            clo, chi = sanitize(*pairdiff_bounds(res, prog.shapes[z], axis, s, factor))
            lo, hi = jnp.maximum(lo, clo), jnp.minimum(hi, chi)
        elif node.out in need or node.out in keep:
            shape = prog.shapes[node.out]
            # Variables of the affine prefix (before ``base``) are bounded in input coordinates.
            at = base if base and prog.producer(node.out) >= prog.producer(base) else 0
            res = backward(prog, node.out, _identity_spec(shape, dtype), bounds,
                           stop=None if full else stored, base=at)  # fmt: skip
            if node.out in keep and at == base:
                stored[node.out] = res
            low = concretize(to_input(prog, res, at, bounds), s, factor)
            n = low.shape[0] // 2
            clo, chi = sanitize(low[:n].reshape(shape), -low[n:].reshape(shape))
            lo, hi = jnp.maximum(lo, clo), jnp.minimum(hi, chi)
        bounds[node.out] = (lo, hi)
    return bounds


def margin_spec(label, classes: int, dtype):
    """[K, K]: row j is e_c − e_j (row c is zero)."""
    return jax.nn.one_hot(label, classes, dtype=dtype)[None, :] - jnp.eye(classes, dtype=dtype)


def _alpha_params(prog: Program, rows: int):
    return {
        i: n.op.init_param(rows, prog.shapes[n.out])
        for i, n in enumerate(prog.nodes)
        if n.op.has_param
    }


def interval_spec(interval, spec):
    """Lower bounds [S] of spec·v for v in the box ``interval`` = (lo, hi)."""
    lo, hi = interval
    low = positive_part(jnp.maximum(spec, 0), lo) + positive_part(jnp.minimum(spec, 0), hi)
    # The sum's rounding: DELTA times the magnitudes of its terms.
    low = low - DELTA * positive_part(jnp.abs(spec), jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    return jnp.where(jnp.isnan(low), -jnp.inf, low)


def crown_pass(prog: Program, s, spec, bounds, factor: float, params=None):
    """Lower bounds [S] of spec·output over the input set by one backward pass from the output
    with the given intermediate ``bounds`` (and alpha ``params``)."""
    base = affine_base(prog)
    res = backward(prog, prog.output, spec, bounds, params, base=base)
    return concretize(to_input(prog, res, base, bounds), s, factor)


def spec_bounds(prog: Program, s: InputSet | ProductSet, spec, method: str, factor: float,
                alpha_steps: int = 20, alpha_lr: float = 0.1, full: bool = False):  # fmt: skip
    """Lower bounds [S] of spec·output over the input set (``spec`` [S, *output shape]);
    ``full``: CROWN's intermediate bounds by :func:`intermediate_bounds`' full passes."""
    bounds = intermediate_bounds(prog, s, method, factor, full)
    if method == "ibp":
        return interval_spec(bounds[prog.output], spec)

    def bound(params):
        return crown_pass(prog, s, spec, bounds, factor, params)

    low = bound(None)
    if method == "alpha-crown":
        low = _optimise(bound, _alpha_params(prog, spec.shape[0]), low, alpha_steps, alpha_lr)
    return low


def margin_bounds(prog: Program, s: InputSet, label, method: str, factor: float,
                  alpha_steps: int = 20, alpha_lr: float = 0.1, full: bool = False):  # fmt: skip
    """Lower bounds [K] of z_c − z_j over the input set (0 at j = c)."""
    classes = prog.shapes[prog.output][0]
    spec = margin_spec(label, classes, s.lo.dtype)
    low = spec_bounds(prog, s, spec, method, factor, alpha_steps, alpha_lr, full)
    return jnp.where(jnp.arange(classes) == label, 0.0, low)


def ibp_and_crown_ibp(prog: Program, s: InputSet, label, factor: float):
    """(IBP's, CROWN-IBP's) lower bounds [K] of z_c − z_j (0 at j = c) from one IBP pass:
    CROWN-IBP's backward pass from the margins uses IBP's intermediate bounds (Zhang et al.
    2020), so certified training mixes the two at the cost of one interval pass."""
    classes = prog.shapes[prog.output][0]
    spec = margin_spec(label, classes, s.lo.dtype)
    bounds = intermediate_bounds(prog, s, "ibp", factor)
    ibp = interval_spec(bounds[prog.output], spec)
    crown = crown_pass(prog, s, spec, bounds, factor)
    at_label = jnp.arange(classes) == label
    return jnp.where(at_label, 0.0, ibp), jnp.where(at_label, 0.0, crown)


def _optimise(bound, params, best, steps: int, lr: float):
    """alpha-CROWN: gradient ascent on the sum of the bounds over the relaxation parameters;
    every iterate's bound is sound, so the elementwise best (starting from CROWN's) is."""
    opt = optax.adam(lr)

    def objective(p):
        low = bound(p)
        return -jnp.sum(jnp.where(jnp.isfinite(low), low, 0.0)), low

    def step(carry, _):
        p, state, best = carry
        (_, low), grads = jax.value_and_grad(objective, has_aux=True)(p)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state, jnp.maximum(best, low)), None

    (p, _, best), _ = jax.lax.scan(step, (params, opt.init(params), best), length=steps)
    return jnp.maximum(best, bound(p))
