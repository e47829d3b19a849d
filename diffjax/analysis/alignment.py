"""Gradient alignment of the two branches: cos θ, ρ, γ and the frequency of negative alignment.

From the Frobenius Gram entries of :func:`diffjax.analysis.jacobians.branch_grams` (Jacobians
flattened over the output entries of a group and the input):

    cos θ = ⟨J1, J2⟩ / (‖J1‖ ‖J2‖)       ρ = ‖J2‖ / ‖J1‖

Gram entries add over groups (concatenating flattened Jacobians), so :func:`reduce_gram` gives the
same statistics per head (summing rows), per row (summing heads) or per layer (summing both).

For standard attention the branches are head pairs (2h, 2h+1) (see :mod:`.jacobians`), so cos θ and
ρ measure how opposed the sensitivities of two heads are: the statistic the paper compares DA with.

γ compares the first DA branch with the standard-attention model's maps. The two models' heads do
not correspond, so γ is taken between per-head root-mean-square norms over the heads in the group:

    γ = sqrt(Σ_h ‖J1,h‖² / H_DA) / sqrt(Σ_h' ‖J_base,h'‖² / H_base),   H_base = 2 · H_DA,

per example and query row (the two models must share the token layout). The same normalisation of
‖J_DA‖ makes Theorem 2 an identity for these aggregates (see :mod:`.theory`).
"""

from __future__ import annotations

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from diffjax.analysis.jacobians import Gram

Array = jax.Array
Over = Literal["none", "rows", "heads", "all"]
_AXES = {"none": (), "rows": (-1,), "heads": (-2,), "all": (-2, -1)}


@flax.struct.dataclass
class Alignment:
    """Branch statistics of a group, each [...].

    Attributes:
      cos: cos θ between the flattened branch Jacobians (NaN when a branch Jacobian is zero).
      rho: ρ = ‖J2‖ / ‖J1‖.
      norm1: ‖J1‖_F.
      norm2: ‖J2‖_F.
      norm_da: ‖J_DA‖_F as differentiated from A1 − λA2 (NaN for softmax attention).
      lam: λ (NaN for softmax attention).
    """

    cos: Array
    rho: Array
    norm1: Array
    norm2: Array
    norm_da: Array
    lam: Array


def reduce_gram(gram: Gram, over: Over) -> Gram:
    """Sum a [..., H', R'] Gram over rows, heads or both (λ is shared and kept).

    Args:
      over: ``"none"`` (per head and row), ``"rows"`` (per head), ``"heads"`` (per row) or
        ``"all"`` (per layer).
    """
    if over not in _AXES:
        raise ValueError(f"over must be one of {sorted(_AXES)}, got {over!r}")
    axes = _AXES[over]
    if not axes:
        return gram
    total = lambda g: jnp.sum(g, axis=axes)  # noqa: E731
    return Gram(
        g11=total(gram.g11),
        g22=total(gram.g22),
        g12=total(gram.g12),
        gda=total(gram.gda),
        lam=jnp.max(gram.lam, axis=axes),
    )


def alignment(gram: Gram) -> Alignment:
    """cos θ, ρ and the branch norms of each group of ``gram``."""
    n1, n2 = jnp.sqrt(gram.g11), jnp.sqrt(gram.g22)
    return Alignment(
        cos=gram.g12 / (n1 * n2),
        rho=n2 / n1,
        norm1=n1,
        norm2=n2,
        norm_da=jnp.sqrt(gram.gda),
        lam=gram.lam,
    )


def negative_frequency(cos: Array, axis=None) -> Array:
    """Fraction of finite entries with cos θ < 0 (over ``axis``; all entries by default)."""
    finite = jnp.isfinite(cos)
    return jnp.sum(finite & (cos < 0), axis=axis) / jnp.sum(finite, axis=axis)


def head_rms_norms(gram_da: Gram, gram_base: Gram) -> tuple[Array, Array, Array]:
    """Per-head RMS norms over the heads of each group, per row.

    Args:
      gram_da: Gram of a DA layer [..., H', R'].
      gram_base: Gram of the same layer of the standard-attention model, its heads paired
        [..., H', R'] (2H' heads).

    Returns:
      (‖J1‖_rms, ‖J_DA‖_rms, ‖J_base‖_rms), each [..., R'].
    """
    if gram_da.g11.shape != gram_base.g11.shape:
        raise ValueError(
            f"DA and base Grams must cover the same heads and rows: {gram_da.g11.shape} vs "
            f"{gram_base.g11.shape}"
        )
    heads = gram_da.g11.shape[-2]
    first = jnp.sqrt(jnp.sum(gram_da.g11, axis=-2) / heads)
    combined = jnp.sqrt(jnp.sum(gram_da.gda, axis=-2) / heads)
    base = jnp.sqrt(jnp.sum(gram_base.g11 + gram_base.g22, axis=-2) / (2 * heads))
    return first, combined, base


def gamma(gram_da: Gram, gram_base: Gram) -> Array:
    """γ = ‖J1‖_rms / ‖J_base‖_rms per example and row: [..., R'] (see the module docstring)."""
    first, _, base = head_rms_norms(gram_da, gram_base)
    return first / base
