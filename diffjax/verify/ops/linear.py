"""Affine operations: y = L(x₁, …, x_k) + c, with L linear in the perturbed inputs.

Covers every primitive that is affine in its perturbed operands (add/sub/neg, mul or div by a
constant, dot_general with a constant, reshape, transpose, broadcast, reduce_sum, concatenate,
slice, pad, squeeze, expand_dims, identity conversions) and the engine's own linear maps.

Interval: y ∈ L(mid) + c ± |L|·rad, where |L| (the op with absolute constants and sub read as
add, ``fn_abs``) is the elementwise absolute value of L's matrix, so |L(δ)| ≤ |L|·|δ|.
Backward: Λ·y = (Lᵀ Λ)·x + Λ·c exactly, with Lᵀ Λ the VJP of the op (vmapped over Λ's rows);
no relaxation. Rounding: the computed L(mid) and |L|·rad err by at most DELTA·|L|·(|mid| + rad)
(their terms' magnitudes), by which the interval is widened; the backward step's own error is
accounted for by the engine from the absolute coefficients, propagated through |L|ᵀ.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffjax.verify.ops.base import Op, widen


def _rows_sum(x):
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


class Linear(Op):
    """``fn(*perturbed)`` affine, ``fn_abs`` the same op with |constants| and sub → add;
    ``zeros`` are zero inputs of the perturbed operands' shapes and dtype."""

    def __init__(self, fn: Callable, fn_abs: Callable, zeros: list):
        self.fn, self.fn_abs, self.zeros = fn, fn_abs, zeros
        self.offset = fn(*zeros)
        self.offset_abs = fn_abs(*zeros)

    def interval(self, *bounds):
        mids = [(lo + hi) / 2 for lo, hi in bounds]
        rads = [(hi - lo) / 2 for lo, hi in bounds]
        center = self.fn(*mids)
        rad = self.fn_abs(*rads) - self.offset_abs
        mag = self.fn_abs(*[jnp.abs(m) + r for m, r in zip(mids, rads, strict=True)])
        return widen(center - rad, center + rad, mag)

    def backward(self, lam, lam_abs, bounds, param=None):
        _, vjp = jax.vjp(self.fn, *self.zeros)
        _, vjp_abs = jax.vjp(self.fn_abs, *self.zeros)
        cts, cts_abs = jax.vmap(vjp)(lam), jax.vmap(vjp_abs)(lam_abs)
        return (
            list(cts),
            list(cts_abs),
            _rows_sum(lam * self.offset),
            _rows_sum(lam_abs * self.offset_abs),
        )
