"""The step 1[x ≥ c] (or 1[x ≤ c]) for a constant c: the derivative factor of max(x, c).

JAX's JVP of max(x, c) multiplies the tangent by [x = max(x, c)] / (1 + [c = max(x, c)]), i.e.
by 1 for x > c, 1/2 at x = c and 0 for x < c (LayerNorm's variance max(0, E[x²] − E[x]²)). The
program writes the comparisons as ``eq(x, max(x, c))`` ⇔ x ≥ c and ``eq(c, max(x, c))`` ⇔ x ≤ c;
each is this op, a 0/1 value that the following ``select_n`` and division turn into the factor.

The step is monotone, so on [l, u] it lies between its values at the ends: the planes are the
constants 0·x + s(l) ≤ s(x) ≤ 0·x + s(u) (increasing; reversed for x ≤ c). Exact when [l, u]
does not contain c, e.g. at a point (ε = 0) away from the kink; [0, 1] otherwise (the Clarke
derivative's hull). No rounding: the values are 0 and 1.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.verify.ops.base import Unary


class Step(Unary):
    """1[x ≥ c] (``above=True``) or 1[x ≤ c], as a float."""

    has_param = False

    def __init__(self, c, above: bool):
        self.c, self.above = c, above

    def f(self, x):
        return (x >= self.c if self.above else x <= self.c).astype(x.dtype)

    def interval(self, bounds):
        lo, hi = bounds
        return (self.f(lo), self.f(hi)) if self.above else (self.f(hi), self.f(lo))

    def planes(self, lo, hi, param):
        low, high = self.interval((lo, hi))
        zero = jnp.zeros_like(low)
        return zero, low, zero, high
