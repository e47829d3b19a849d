"""The paper's formal results on branch sensitivity: formulas, and checks on measured Jacobians.

Notation (README, "Exact sensitivity analysis"): J1, J2, J_DA are the Jacobians of A1, A2 and
A1 − λA2 with respect to the input, flattened; norms are Frobenius; cos θ and ρ = ‖J2‖/‖J1‖ as in
:mod:`.alignment`; γ = ‖J1‖/‖J_base‖ with per-head RMS norms.

* Lemma 1: ‖J_DA‖² = ‖J1‖² + λ²‖J2‖² − 2λ‖J1‖‖J2‖ cos θ.
* Theorem 1: for fixed ρ, ‖J_DA‖ ranges over [|1 − λρ|, 1 + λρ]·‖J1‖, the ends at cos θ = +1, −1.
* Theorem 2: ‖J_DA‖/‖J_base‖ = γ·√(1 + λ²ρ² − 2λρ cos θ).
* Theorem 3: DA is more sensitive than standard attention (‖J_DA‖ > ‖J_base‖) iff
  cos θ < (1 + λ²ρ² − γ⁻²) / (2λρ).

With λ independent of the input these are identities of inner-product algebra, so on measured
Jacobians they hold to rounding; :func:`check_theory` measures by how much, with ‖J_DA‖
differentiated on its own (not recomputed from J1 and J2). Lemma 2 (L_DA/L_base ≤ the right side
of Theorem 2, with local Lipschitz constants, i.e. spectral norms) is no identity; not checked.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from diffjax.analysis.alignment import alignment, gamma, head_rms_norms, reduce_gram
from diffjax.analysis.jacobians import Gram

Array = jax.Array


def lemma1_norm(norm1: Array, norm2: Array, cos: Array, lam: Array) -> Array:
    """‖J_DA‖ from Lemma 1: √(‖J1‖² + λ²‖J2‖² − 2λ‖J1‖‖J2‖cos θ)."""
    sq = norm1**2 + lam**2 * norm2**2 - 2 * lam * norm1 * norm2 * cos
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def theorem1_extremes(norm1: Array, rho: Array, lam: Array) -> tuple[Array, Array]:
    """Theorem 1's range of ‖J_DA‖: (|1 − λρ|·‖J1‖ at cos θ = 1, (1 + λρ)·‖J1‖ at cos θ = −1)."""
    return jnp.abs(1 - lam * rho) * norm1, (1 + lam * rho) * norm1


def theorem2_ratio(gamma: Array, rho: Array, cos: Array, lam: Array) -> Array:
    """Theorem 2's ‖J_DA‖/‖J_base‖ = γ·√(1 + λ²ρ² − 2λρ cos θ)."""
    return gamma * jnp.sqrt(jnp.maximum(1 + lam**2 * rho**2 - 2 * lam * rho * cos, 0.0))


def theorem3_threshold(gamma: Array, rho: Array, lam: Array) -> Array:
    """Theorem 3's threshold: DA is more sensitive iff cos θ < (1 + λ²ρ² − γ⁻²) / (2λρ)."""
    return (1 + lam**2 * rho**2 - gamma**-2) / (2 * lam * rho)


@flax.struct.dataclass
class TheoryCheck:
    """How the measured Jacobians meet Lemma 1 and Theorems 1-3.

    Lemma 1 and Theorem 1 are per group [..., H', R']; Theorems 2-3 per example and row [..., R']
    (heads aggregated as in :func:`diffjax.analysis.alignment.gamma`) and NaN/False without a base.

    Attributes:
      lemma1_rel_err: |‖J_DA‖ − Lemma 1| / ‖J_DA‖.
      theorem1_position: (‖J_DA‖ − low) / (high − low) ∈ [0, 1] when Theorem 1 holds.
      theorem1_holds: low ≤ ‖J_DA‖ ≤ high up to ``rtol``.
      ratio: measured ‖J_DA‖_rms / ‖J_base‖_rms.
      theorem2: γ·√(1 + λ²ρ² − 2λρ cos θ).
      theorem2_rel_err: |ratio − theorem2| / ratio.
      theorem3_predicted: cos θ < threshold.
      theorem3_measured: ratio > 1.
    """

    lemma1_rel_err: Array
    theorem1_position: Array
    theorem1_holds: Array
    ratio: Array
    theorem2: Array
    theorem2_rel_err: Array
    theorem3_predicted: Array
    theorem3_measured: Array


def check_theory(gram_da: Gram, gram_base: Gram | None = None, rtol: float | None = None):
    """Check Lemma 1 and Theorems 1-3 on Grams [..., H', R'] of a DA layer (and its baseline).

    Args:
      gram_da: from :func:`diffjax.analysis.jacobians.branch_grams` on a DA layer.
      gram_base: the same layer and selection of the standard-attention model, or ``None``.
      rtol: slack of the Theorem 1 inequalities (default 100 × the dtype's epsilon).

    Returns:
      :class:`TheoryCheck`.
    """
    if rtol is None:
        rtol = 100 * float(jnp.finfo(gram_da.g11.dtype).eps)
    a = alignment(gram_da)
    lemma1 = lemma1_norm(a.norm1, a.norm2, a.cos, a.lam)
    low, high = theorem1_extremes(a.norm1, a.rho, a.lam)
    holds = (a.norm_da >= low * (1 - rtol)) & (a.norm_da <= high * (1 + rtol))
    if gram_base is None:
        nan = jnp.full_like(gram_da.g11[..., 0, :], jnp.nan)
        ratio = pred = err = nan
        predicted = measured = jnp.zeros(nan.shape, bool)
    else:
        h = alignment(reduce_gram(gram_da, "heads"))
        g = gamma(gram_da, gram_base)
        _, combined, base = head_rms_norms(gram_da, gram_base)
        ratio = combined / base
        pred = theorem2_ratio(g, h.rho, h.cos, h.lam)
        err = jnp.abs(ratio - pred) / ratio
        predicted = h.cos < theorem3_threshold(g, h.rho, h.lam)
        measured = ratio > 1
    return TheoryCheck(
        lemma1_rel_err=jnp.abs(a.norm_da - lemma1) / a.norm_da,
        theorem1_position=(a.norm_da - low) / (high - low),
        theorem1_holds=holds,
        ratio=ratio,
        theorem2=pred,
        theorem2_rel_err=err,
        theorem3_predicted=predicted,
        theorem3_measured=measured,
    )
