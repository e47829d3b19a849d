"""Smooth activations that are neither convex nor concave: GELU, tanh, the logistic sigmoid, erf.

A principled rule for any C² function f with |f''| ≤ M on the line: pick a slope a, then
g(x) = f(x) − a·x has |g''| ≤ M, so on [l, u] it lies within M·h²/8 of its piecewise-linear
interpolant on a grid of spacing h (the interpolation error bound of a C² function), and
min_[l,u] g ≥ min over the grid − M·h²/8, max_[l,u] g ≤ max over the grid + M·h²/8. Hence

    a·x + (min_grid g − M h²/8) ≤ f(x) ≤ a·x + (max_grid g + M h²/8)   on [l, u].

CROWN takes a = the chord slope (f(u) − f(l))/(u − l) for both planes; alpha-CROWN optimises
the two slopes independently as f'(t) at points t ∈ [l, u]. The grid has ``GRID`` points (both
ends included), so at l = u both planes pass through f(l): the bound is exact at a point.
Rounding: the intercepts move by DELTA times the magnitudes of the grid values, of a·x and of the
ends (a grid point's rounding shifts it by at most DELTA·(|l| + |u|), where |g'| ≤ sup|f'| + |a|).

The interval bounds use monotonicity (tanh, logistic, erf increase) and, for GELU, that it
decreases to its minimum f(x*) > −0.17 at x* ∈ (−0.76, −0.74) and increases after it.

M (sup|f''| over ℝ, rounded up): GELU f'' = φ(x)(2 − x²), at most 2φ(0) < 0.8; tanh
f'' = −2 tanh·sech², at most 4/(3√3) < 0.77; logistic σ'' = σ(1 − σ)(1 − 2σ), at most
1/(6√3) < 0.0963; erf f'' = −(4/√π)·x·exp(−x²), at most 2√2/√(πe) < 0.968.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.verify.ops.base import DELTA, TINY, Unary, tangent_point, widen

GRID = 33
SQRT2 = math.sqrt(2.0)


class Smooth(Unary):
    """A C² elementwise function with |f''| ≤ ``curvature`` and sup|f'| ≤ ``max_slope``."""

    curvature: float
    max_slope: float
    increasing = True

    def f(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def df(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def init_param(self, rows, shape):
        return jnp.zeros((rows, *shape, 2))

    def _slopes(self, lo, hi, param):
        if param is None:
            width = hi - lo
            safe = jnp.where(width > 0, width, 1.0)
            chord = jnp.where(width > 0, (self.f(hi) - self.f(lo)) / safe, self.df(lo))
            return chord, chord
        return (self.df(tangent_point(lo, hi, param[..., i])) for i in (0, 1))

    def planes(self, lo, hi, param):
        slope_l, slope_u = self._slopes(lo, hi, param)
        lo, hi = jnp.broadcast_to(lo, slope_l.shape), jnp.broadcast_to(hi, slope_l.shape)
        k = jnp.arange(GRID) / (GRID - 1)
        x = lo[..., None] + k * (hi - lo)[..., None]
        x = jnp.where(k == 1.0, hi[..., None], x)  # the grid ends exactly at u
        fx = self.f(x)
        gap = 1.01 * self.curvature * ((hi - lo) / (GRID - 1)) ** 2 / 8
        span = jnp.abs(lo) + jnp.abs(hi)

        def intercept(a, pick, sign):
            g = fx - a[..., None] * x
            mag = jnp.max(jnp.abs(fx), -1) + jnp.abs(a) * span
            slack = DELTA * (mag + (self.max_slope + jnp.abs(a)) * span) + TINY
            return pick(g, -1) + sign * (gap + slack)

        return slope_l, intercept(slope_l, jnp.min, -1), slope_u, intercept(slope_u, jnp.max, 1)

    def interval(self, bounds):
        lo, hi = bounds
        return widen(self.f(lo), self.f(hi))


class Gelu(Smooth):
    """Exact GELU x·Φ(x)."""

    curvature = 0.8
    max_slope = 1.13  # sup f' = f'(√2) = Φ(√2) + √2·φ(√2) ≈ 1.129

    def f(self, x):
        return x * 0.5 * (1.0 + jax.lax.erf(x / SQRT2))

    def df(self, x):
        return 0.5 * (1.0 + jax.lax.erf(x / SQRT2)) + x * jnp.exp(-0.5 * x * x) / math.sqrt(
            2 * math.pi
        )

    def interval(self, bounds):
        lo, hi = bounds
        flo, fhi = self.f(lo), self.f(hi)
        bottom = jnp.minimum(flo, fhi)
        bottom = jnp.where((lo < -0.74) & (hi > -0.76), jnp.minimum(bottom, -0.17), bottom)
        return widen(bottom, jnp.maximum(flo, fhi))


class Tanh(Smooth):
    curvature = 0.77
    max_slope = 1.0

    def f(self, x):
        return jnp.tanh(x)

    def df(self, x):
        return 1.0 - jnp.tanh(x) ** 2


class Logistic(Smooth):
    curvature = 0.0963
    max_slope = 0.25

    def f(self, x):
        return jax.nn.sigmoid(x)

    def df(self, x):
        s = jax.nn.sigmoid(x)
        return s * (1.0 - s)


class Erf(Smooth):
    curvature = 0.968
    max_slope = 2.0 / math.sqrt(math.pi)

    def f(self, x):
        return jax.lax.erf(x)

    def df(self, x):
        return 2.0 / math.sqrt(math.pi) * jnp.exp(-x * x)
