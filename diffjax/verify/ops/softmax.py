"""Softmax's denominators in the direct form: S_i = Σ_j exp(z_j − z_i) along one axis of z.

One operation for what the direct form writes as three (the pairwise differences t_ij = z_j − z_i,
exp, the sum over j), so that a backward step never holds a coefficient per (row, i, j): with
the exp planes a_ij·t + b_ij on t's bounds (:class:`~diffjax.verify.ops.Exp`, chosen per
(i, j) by the sign of Λ_i), Λ·S ≥ Σ_ij c_ij·(z_j − z_i) + Σ_ij (Λ⁺_i b^l_ij + Λ⁻_i b^u_ij) with
c_ij = Λ⁺_i a^l_ij + Λ⁻_i a^u_ij, and Σ_ij c_ij·(z_j − z_i) = Σ_k (Σ_i c_ik − Σ_j c_kj)·z_k: a
contraction over i ([rows, …, N] by [N, N] per row of z) and a row sum, never [rows, …, N, N].
These are the bounds of the three-step composition exactly, term by term (the same planes
and sums); the magnitudes carried for the rounding slack are the same sums of |Λ|·max(|a^l|,
|a^u|) and |Λ|·max(|b^l|, |b^u|).

The op reads the bounds of t (the program's pairwise-difference variable, bounded from z's
linear bounds so that the noise shared by a row cancels) besides its input z. With alpha-CROWN
parameters (a tangent point per row, i and j) the planes differ per row and the step forms the
[rows, …, N, N] coefficients as the composition did.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.verify.ops.base import Op, positive_part
from diffjax.verify.ops.convex import Exp
from diffjax.verify.ops.linear import Linear


class SumExpDiff(Op):
    """S[..., i] = Σ_j exp(z_j − z_i), z's ``axis`` moved last in S ([..., N]); node inputs
    (z,), reads (t,) with t[..., i, j] = z_j − z_i."""

    has_param = True

    def __init__(self, axis: int, zeros_t):
        self.axis = axis
        self.exp = Exp()
        self.total = Linear(lambda e: jnp.sum(e, -1), lambda e: jnp.sum(e, -1), [zeros_t])

    def init_param(self, rows, shape):
        return jnp.zeros((rows, *shape, shape[-1]))

    def interval(self, z_bounds, t_bounds):
        return self.total.interval(self.exp.interval(t_bounds))

    def backward(self, lam, lam_abs, bounds, param=None):
        _, (tlo, thi) = bounds
        al, bl, au, bu = self.exp.planes(tlo, thi, param)
        # An overflowed plane is the trivial one, ±∞ (as for every elementwise op).
        ok_l, ok_u = jnp.isfinite(al) & jnp.isfinite(bl), jnp.isfinite(au) & jnp.isfinite(bu)
        al, bl = jnp.where(ok_l, al, 0.0), jnp.where(ok_l, bl, -jnp.inf)
        au, bu = jnp.where(ok_u, au, 0.0), jnp.where(ok_u, bu, jnp.inf)
        mag_a = jnp.maximum(jnp.abs(al), jnp.abs(au))
        mag_b = jnp.maximum(jnp.abs(bl), jnp.abs(bu))
        pos, neg = jnp.maximum(lam, 0.0), jnp.minimum(lam, 0.0)
        if param is None:  # planes [..., i, j], the same for every row of Λ
            into = (jnp.einsum("s...i,...ij->s...j", pos, al)
                    + jnp.einsum("s...i,...ij->s...j", neg, au))  # fmt: skip
            out_of = pos * jnp.sum(al, -1) + neg * jnp.sum(au, -1)
            into_abs = jnp.einsum("s...i,...ij->s...j", lam_abs, mag_a)
            out_abs = lam_abs * jnp.sum(mag_a, -1)
        else:  # planes [rows, ..., i, j]
            c = pos[..., None] * al + neg[..., None] * au
            into, out_of = jnp.sum(c, -2), jnp.sum(c, -1)
            ca = lam_abs[..., None] * mag_a
            into_abs, out_abs = jnp.sum(ca, -2), jnp.sum(ca, -1)
        # Σ_ij Λ⁺_i b_ij summed over j first: b^l is finite or −∞, b^u finite or +∞, so the
        # row sums are −∞ / +∞ exactly where a term is, as in the composition.
        bias = positive_part(pos, jnp.sum(bl, -1)) + positive_part(neg, jnp.sum(bu, -1))
        bias_abs = positive_part(lam_abs, jnp.sum(mag_b, -1))
        back = lambda v: jnp.moveaxis(v, -1, self.axis + 1)  # noqa: E731 - [S, *z's shape]
        return [back(into - out_of)], [back(into_abs + out_abs)], bias, bias_abs
