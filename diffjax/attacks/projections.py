"""Feasible sets of the attacks: ε-balls intersected with the [0, 1] pixel box.

All functions act on ONE example (any shape, e.g. [H, W, C]); the attacks ``vmap`` them.

    x = project(x, x0, eps, "l2")        # exact Euclidean projection onto B₂(x0, ε) ∩ [0, 1]^d
    x = uniform_start(key, x0, eps, "l2")  # uniform in B₂(x0, ε) (radius ε·u^(1/d)), then the box

The ℓ∞ projection clips twice (the two constraints are coordinate-wise, so this is exact). The ℓ2
projection onto the ball ∩ box is exact too: by the KKT conditions it is clip(t·v, lo, hi) for the
unique t ∈ (0, 1] at which its norm equals ε, and the norm is piecewise a·t² + c between the
breakpoints where coordinates hit the box, so sorting the breakpoints gives t in closed form
(:func:`solve_saturating`). FAB's projections onto a hyperplane inside the box use the same solver.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")


def norm_of(delta: Array, norm: Norm) -> Array:
    """ℓ∞ or ℓ2 norm of one example's perturbation (all axes). Scalar float32."""
    if norm == "linf":
        return jnp.max(jnp.abs(delta))
    return jnp.sqrt(jnp.sum(jnp.square(delta)))


def solve_saturating(
    breaks: Array, saturated: Array, slope: Array, power: int, target: Array
) -> Array:
    """Smallest t ≥ 0 with F(t) = target for the continuous non-decreasing function

        F(t) = Σ_{i: breaks_i ≤ t} saturated_i + t^power · Σ_{i: breaks_i > t} slope_i,

    (every coordinate grows like t^power·slope_i until its breakpoint, where it reaches
    saturated_i = breaks_i^power·slope_i, then stays). Exact active-set iteration: with the
    coordinates saturated at t_n fixed, solve the one-term equation for t_{n+1}. Starting from
    the solution with nothing saturated, F(t_n) ≤ target and t_n increases, the saturated set only
    grows, and the iteration stops when it no longer changes, where F(t) = target holds exactly
    (up to float rounding) — at most n + 1 rounds, a handful in practice. Unlike sorting the
    breakpoints it costs O(n) per round.

    Args:
      breaks: [n] breakpoints ≥ 0 (``inf`` for a coordinate that never saturates; its
        ``saturated`` and ``slope`` must then be 0).
      saturated: [n] values ≥ 0 after saturation.
      slope: [n] coefficients ≥ 0 before saturation.
      power: 1 or 2.
      target: scalar ≥ 0.

    Returns:
      t, scalar. When even full saturation cannot reach ``target``, the largest finite
      breakpoint (everything saturated: the closest one can get).
    """
    largest_finite = jnp.max(jnp.where(jnp.isfinite(breaks), breaks, 0.0))

    def solve(t):
        done = breaks <= t
        reached = jnp.sum(jnp.where(done, saturated, 0.0))
        rest = jnp.sum(jnp.where(done, 0.0, slope))
        root = jnp.maximum(target - reached, 0.0) / jnp.where(rest > 0, rest, 1.0)
        root = jnp.sqrt(root) if power == 2 else root
        return jnp.where(rest > 0, jnp.maximum(root, t), largest_finite), jnp.sum(done)

    def more(state):
        _, count, previous, rounds = state
        return (count != previous) & (rounds <= breaks.shape[0])

    def round_(state):
        t, count, _, rounds = state
        t, new_count = solve(t)
        return t, new_count, count, rounds + 1

    t, count = solve(jnp.zeros((), breaks.dtype))
    t, _, _, _ = lax.while_loop(more, round_, (t, count, jnp.int32(-1), jnp.int32(0)))
    return t


def project_l2_box(v: Array, lo: Array, hi: Array, eps: float) -> Array:
    """Exact Euclidean projection of ``v`` onto {δ : ‖δ‖₂ ≤ ε, lo ≤ δ ≤ hi} (lo ≤ 0 ≤ hi).

    Args:
      v, lo, hi: arrays of one shape.
      eps: radius ≥ 0.

    Returns:
      δ of ``v``'s shape, with ‖δ‖₂ ≤ ε up to float32 rounding.
    """
    flat_v, flat_lo, flat_hi = v.ravel(), lo.ravel(), hi.ravel()
    cap = jnp.where(flat_v > 0, flat_hi, -flat_lo)  # how far coordinate i can move along v_i
    moving = flat_v != 0
    breaks = jnp.where(moving, cap / jnp.where(moving, jnp.abs(flat_v), 1.0), jnp.inf)
    saturated = jnp.where(moving, cap**2, 0.0)
    t = solve_saturating(breaks, saturated, flat_v**2, 2, jnp.asarray(eps, v.dtype) ** 2)
    clipped = jnp.clip(v, lo, hi)
    inside = jnp.sum(jnp.square(clipped)) <= eps**2
    delta = jnp.where(inside, clipped, jnp.clip(jnp.minimum(t, 1.0) * v, lo, hi))
    # Float rounding can leave the norm one ulp above ε; shrinking toward 0 stays in the box.
    n = jnp.sqrt(jnp.sum(jnp.square(delta)))
    return jnp.where(n > eps, delta * (eps / jnp.maximum(n, 1e-30)), delta)


def project(x: Array, x0: Array, eps: float, norm: Norm) -> Array:
    """Projection of ``x`` onto B_p(x0, ε) ∩ [0, 1]^d (exact for both norms). Same shape as x."""
    if norm == "linf":
        return jnp.clip(jnp.clip(x, x0 - eps, x0 + eps), 0.0, 1.0)
    return x0 + project_l2_box(x - x0, -x0, 1.0 - x0, eps)


def normalized_step(grad: Array, norm: Norm) -> Array:
    """Steepest-ascent direction of unit p-norm: sign(g) for ℓ∞, g/‖g‖₂ for ℓ2 (0 if g = 0)."""
    if norm == "linf":
        return jnp.sign(grad)
    n = jnp.sqrt(jnp.sum(jnp.square(grad)))
    return grad / jnp.where(n > 0, n, 1.0)


def uniform_start(key: Array, x0: Array, eps: float, norm: Norm) -> Array:
    """A point drawn uniformly from B_p(x0, ε), then clipped to the box.

    ℓ2: direction g/‖g‖ with g Gaussian, radius ε·u^(1/d) with u ~ U(0, 1) — the radius law of a
    uniform draw from a d-ball (P(r ≤ ρε) = ρ^d), not ε·u. Clipping to the box only shrinks the
    perturbation, so the start is feasible.
    """
    if norm == "linf":
        delta = jax.random.uniform(key, x0.shape, x0.dtype, -eps, eps)
    else:
        k_dir, k_rad = jax.random.split(key)
        g = jax.random.normal(k_dir, x0.shape, x0.dtype)
        radius = eps * jax.random.uniform(k_rad, (), x0.dtype) ** (1.0 / x0.size)
        delta = radius * g / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), 1e-30)
    return jnp.clip(x0 + delta, 0.0, 1.0)


def boundary_start(key: Array, x0: Array, eps: float, norm: Norm) -> Array:
    """APGD's start (Croce & Hein): x0 + ε·t/‖t‖_p, t ~ U[−1, 1]^d (ℓ∞) or N(0, I) (ℓ2), then
    clipped to the box: a point on the sphere of radius ε before clipping."""
    if norm == "linf":
        t = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
    else:
        t = jax.random.normal(key, x0.shape, x0.dtype)
    return jnp.clip(x0 + eps * t / jnp.maximum(norm_of(t, norm), 1e-30), 0.0, 1.0)


def project_hyperplane_box(point: Array, w: Array, b: Array, norm: Norm) -> Array:
    """Smallest-norm step d with w·(point + d) = b and point + d ∈ [0, 1]^d (FAB's projection).

    The minimiser moves each coordinate along sign(w_i)·sign(b − w·point) until it hits the box:
    d_i = ±min(r, cap_i) for ℓ∞, ±min(λ|w_i|, cap_i) for ℓ2 (KKT), with r or λ solved exactly by
    :func:`solve_saturating`. When the box makes the hyperplane unreachable, returns the step that
    gets closest (every coordinate at its bound).

    Args:
      point, w: one example, same shape.
      b: scalar.
      norm: ``"linf"`` or ``"l2"``.

    Returns:
      d, same shape as ``point``.
    """
    p, wf = point.ravel(), w.ravel()
    need = b - jnp.dot(wf, p)
    direction = jnp.sign(wf) * jnp.where(need >= 0, 1.0, -1.0)  # move to increase sign(need)·w·x
    cap = jnp.where(direction > 0, 1.0 - p, jnp.where(direction < 0, p, 0.0))
    a = jnp.abs(wf)
    if norm == "linf":
        breaks = jnp.where(a > 0, cap, jnp.inf)
        t = solve_saturating(breaks, a * cap, a, 1, jnp.abs(need))
        d = direction * jnp.minimum(t, cap)
    else:
        breaks = jnp.where(a > 0, cap / jnp.where(a > 0, a, 1.0), jnp.inf)
        t = solve_saturating(breaks, a * cap, a**2, 1, jnp.abs(need))
        d = direction * jnp.minimum(t * a, cap)
    return d.reshape(point.shape)
