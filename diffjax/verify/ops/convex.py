"""Convex elementwise functions: exp, square, 1/x, 1/x² and 1/√x (on x > 0), max(x, c).

Planes on [l, u] for a convex f: the chord through (l, f(l)) and (u, f(u)) lies above f on
[l, u]; the tangent at any t ∈ [l, u], f(t) + f'(t)(x − t), lies below f everywhere (CROWN takes
t = (l + u)/2; alpha-CROWN optimises t). Rounding: the computed slope a is the exact slope of a
real plane; the plane's intercept is moved by DELTA·(|f(l)| + |f(u)| + |f(t)| + |a|·(|l| + |u| +
|t|)), which exceeds both the rounding of the intercept and |a − f'(t)|·(u − l) (the error of a
rounded slope over the interval). 1/x, 1/x² and 1/√x are convex only for x > 0: an interval reaching
0 gets infinite planes (the bound is then −∞, never wrong). max(x, c) is convex but not smooth:
its lower planes are α·x + (1 − α)·c, α ∈ [0, 1] (max(x, c) is above both x and c).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.verify.ops.base import DELTA, TINY, Unary, tangent_point, widen


class Convex(Unary):
    """A smooth convex f with derivative df, increasing, decreasing or neither (square)."""

    positive_domain = False

    def _safe(self, lo, hi):
        ok = lo > 0 if self.positive_domain else jnp.ones_like(lo, bool)
        one = jnp.ones_like(lo)
        return ok, jnp.where(ok, lo, one), jnp.where(ok, hi, one)

    def planes(self, lo, hi, param):
        ok, lo, hi = self._safe(lo, hi)
        flo, fhi = self.f(lo), self.f(hi)
        width = hi - lo
        chord = jnp.where(width > 0, (fhi - flo) / jnp.where(width > 0, width, 1.0), self.df(lo))
        t = tangent_point(lo, hi, param)
        ft, slope = self.f(t), self.df(t)
        span = jnp.abs(lo) + jnp.abs(hi)
        slack_u = DELTA * (jnp.abs(flo) + jnp.abs(fhi) + jnp.abs(chord) * span) + TINY
        slack_l = DELTA * (jnp.abs(ft) + jnp.abs(slope) * (span + jnp.abs(t))) + TINY
        bu = jnp.where(ok, flo - chord * lo + slack_u, jnp.inf)
        bl = jnp.where(ok, ft - slope * t - slack_l, -jnp.inf)
        return jnp.where(ok, slope, 0.0), bl, jnp.where(ok, chord, 0.0), bu

    def interval(self, bounds):
        lo, hi = bounds
        ok, slo, shi = self._safe(lo, hi)
        a, b = self.f(slo), self.f(shi)
        bottom, top = jnp.minimum(a, b), jnp.maximum(a, b)
        bottom = self.interior_minimum(slo, shi, bottom)
        bottom, top = widen(bottom, top)
        return jnp.where(ok, bottom, -jnp.inf), jnp.where(ok, top, jnp.inf)

    def interior_minimum(self, lo, hi, bottom):
        """The minimum over [l, u] when it is inside (monotone functions: at an end)."""
        return bottom


class Exp(Convex):
    def f(self, x):
        return jnp.exp(x)

    def df(self, x):
        return jnp.exp(x)


class Square(Convex):
    def f(self, x):
        return x * x

    def df(self, x):
        return 2.0 * x

    def interior_minimum(self, lo, hi, bottom):
        return jnp.where((lo < 0) & (hi > 0), 0.0, bottom)


class Reciprocal(Convex):
    positive_domain = True

    def f(self, x):
        return 1.0 / x

    def df(self, x):
        return -1.0 / (x * x)


class InverseSquare(Convex):
    """x⁻² on x > 0 (the JVP of 1/x: −t/x²)."""

    positive_domain = True

    def f(self, x):
        return 1.0 / (x * x)

    def df(self, x):
        return -2.0 / (x * x * x)


class Rsqrt(Convex):
    positive_domain = True

    def f(self, x):
        return jax.lax.rsqrt(x)

    def df(self, x):
        return -0.5 * jax.lax.rsqrt(x) / x


class MaxConst(Unary):
    """max(x, c) for a constant c (broadcastable): the ReLU family, CROWN's adaptive slope."""

    def __init__(self, c):
        self.c = c

    def planes(self, lo, hi, param):
        c = self.c
        above, below = lo >= c, hi <= c
        default = (hi - c >= c - lo).astype(lo.dtype)
        alpha = default if param is None else jax.nn.sigmoid(param)
        alpha = jnp.where(above, 1.0, jnp.where(below, 0.0, alpha))
        width = jnp.where(above | below, 1.0, hi - lo)
        chord = jnp.where(above, 1.0, jnp.where(below, 0.0, (hi - c) / width))
        slack = DELTA * (jnp.abs(c) + (jnp.abs(lo) + jnp.abs(hi))) + TINY
        bu = jnp.where(above, 0.0, c - chord * jnp.where(below, 0.0, lo)) + slack
        bl = (1.0 - alpha) * c - slack
        return alpha, bl, chord, bu

    def interval(self, bounds):
        lo, hi = bounds
        return widen(jnp.maximum(lo, self.c), jnp.maximum(hi, self.c))
