"""What every relaxation shares: the rounding slack and the backward step of elementwise ops.

Rounding (the float64 path). Every bound is computed in floating point; it stays sound because
each computed quantity is widened by ``DELTA`` times a bound on the magnitudes it was computed
from. One correctly rounded float64 operation errs by at most u·|result| (u = 2⁻⁵³), a sum or
dot product of n terms by γ_n·Σ|terms| with γ_n = n·u/(1 − n·u); DELTA = 2⁻⁴⁰ ≥ 2·γ_n for every
n ≤ 2¹² (the engine checks the contraction lengths of the traced program and scales the slack
when they are longer), and it also covers the few-ulp errors of exp, erf, tanh and rsqrt.
``TINY`` covers underflow (a result rounded to 0 or a subnormal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.analysis.certified import DELTA

Array = jax.Array
TINY = 2.0**-1000


def widen(lo: Array, hi: Array, mag: Array | float = 0.0) -> tuple[Array, Array]:
    """[lo, hi] widened for the rounding of a result whose terms had magnitude ``mag``."""
    slack = DELTA * (jnp.abs(lo) + jnp.abs(hi) + mag) + TINY
    return lo - slack, hi + slack


def sanitize(lo: Array, hi: Array) -> tuple[Array, Array]:
    """NaN bounds (∞ − ∞ after an overflow) read as no bound at all: −∞ and +∞."""
    return jnp.where(jnp.isnan(lo), -jnp.inf, lo), jnp.where(jnp.isnan(hi), jnp.inf, hi)


def positive_part(lam: Array, value: Array) -> Array:
    """Σ over the non-leading axes of Λ·value where value may be ±inf, 0 where Λ is 0: [S]."""
    prod = jnp.where(lam == 0, 0.0, lam * value)
    return jnp.sum(prod.reshape(prod.shape[0], -1), axis=1)


class Op:
    """One operation of the program. ``ins`` of the node are its perturbed inputs."""

    # Whether backward takes a parameter that alpha-CROWN optimises (None: CROWN's choice).
    has_param = False

    def interval(self, *bounds):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, lam, lam_abs, bounds, param=None):  # pragma: no cover - interface
        raise NotImplementedError

    def init_param(self, rows: int, shape) -> Array | None:
        return None


class Unary(Op):
    """An elementwise function with lower/upper planes al·x + bl ≤ f(x) ≤ au·x + bu on [l, u].

    Backward step (CROWN): for Λ = Λ⁺ + Λ⁻ (positive and negative parts),
    Λ·f(x) ≥ Λ⁺·(al·x + bl) + Λ⁻·(au·x + bu), elementwise, for every x in [l, u].
    """

    has_param = True

    def planes(self, lo, hi, param):  # pragma: no cover - interface
        raise NotImplementedError

    def init_param(self, rows, shape):
        return jnp.zeros((rows, *shape))

    def backward(self, lam, lam_abs, bounds, param=None):
        ((lo, hi),) = bounds
        al, bl, au, bu = self.planes(lo, hi, param)
        # An overflowed plane (exp of a huge bound) is replaced by the trivial one, ±∞.
        ok_l, ok_u = jnp.isfinite(al) & jnp.isfinite(bl), jnp.isfinite(au) & jnp.isfinite(bu)
        al, bl = jnp.where(ok_l, al, 0.0), jnp.where(ok_l, bl, -jnp.inf)
        au, bu = jnp.where(ok_u, au, 0.0), jnp.where(ok_u, bu, jnp.inf)
        pos, neg = jnp.maximum(lam, 0.0), jnp.minimum(lam, 0.0)
        coeff = pos * al + neg * au
        bias = positive_part(pos, bl) + positive_part(neg, bu)
        mag_a = jnp.maximum(jnp.abs(al), jnp.abs(au))
        mag_b = jnp.maximum(jnp.abs(bl), jnp.abs(bu))
        return [coeff], [lam_abs * mag_a], bias, positive_part(lam_abs, mag_b)


def tangent_point(lo: Array, hi: Array, param: Array | None) -> Array:
    """The point l + σ(θ)·(u − l) of [l, u] (θ = 0, the midpoint, when no parameter)."""
    frac = 0.5 if param is None else jax.nn.sigmoid(param)
    return lo + frac * (hi - lo)
