"""Attack accounting: clean accuracy, robust accuracy, attack success rate, norms.

    s = summarize(labels, clean_pred, adv_pred, linf, l2, model_calls)
    s.asr, s.robust_accuracy, s.as_dict()

Definitions (n examples, y the label, t the target, ŷ₀ the clean and ŷ the adversarial
prediction):

* clean accuracy = #{ŷ₀ = y} / n;
* fooled = #{ŷ₀ = y and ŷ ≠ y} (targeted: ŷ₀ = y and ŷ = t) — only initially correct examples
  can be fooled;
* ASR = fooled / #{ŷ₀ = y} (undefined, ``None``, when nothing is classified correctly);
* robust accuracy = #{ŷ₀ = y and ŷ = y} / n, over ALL examples (misclassified ones count as
  not robust); untargeted, robust accuracy = clean accuracy × (1 − ASR);
* norms: mean and median of ‖δ‖∞ and ‖δ‖₂ over the fooled examples (``None`` if none);
* invalid = examples whose logits were not finite (``valid`` False): never correct, never
  fooled, never robust, counted apart (they still count in n);
* 95 % Wilson score intervals for the three rates.

Everything is recomputed from the predictions, not taken from the attack's success flags.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

WILSON_Z = 1.959963984540054  # two-sided 95 %


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (``None`` when ``trials`` = 0)."""
    if trials == 0:
        return None
    p = successes / trials
    denom = 1 + z**2 / trials
    center = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    # The interval always contains p; clamping removes rounding (e.g. 5.6e-17 above p = 0).
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = WILSON_Z):
    """Interval of the difference p1 − p2 of two independent binomial proportions (k/n each):
    Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two Wilson
    intervals, so it stays inside [−1, 1] and is sensible at 0 and n. ``None`` when n1 or n2
    is 0."""
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Aggregate numbers of one attack over n examples (definitions in the module docstring)."""

    examples: int
    clean_correct: int
    fooled: int
    robust: int
    invalid: int
    clean_accuracy: float
    robust_accuracy: float
    asr: float | None
    clean_accuracy_ci: tuple[float, float] | None
    robust_accuracy_ci: tuple[float, float] | None
    asr_ci: tuple[float, float] | None
    mean_linf: float | None
    median_linf: float | None
    mean_l2: float | None
    median_l2: float | None
    mean_model_calls: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(
    labels, clean_pred, adv_pred, linf, l2, model_calls, targets=None, valid=None
) -> Summary:
    """Aggregate per-example records.

    Args:
      labels, clean_pred, adv_pred: [n] integer classes.
      linf, l2: [n] perturbation norms.
      model_calls: [n] model evaluations per example.
      targets: [n] target classes for a targeted attack, else ``None``.
      valid: [n] bool, False where the logits behind a prediction were not finite; ``None``:
        all valid.

    Raises:
      ValueError: empty input, arrays of different lengths, or non-finite norms of a valid
        example.
    """
    arrays = [np.asarray(a) for a in (labels, clean_pred, adv_pred, linf, l2, model_calls)]
    n = arrays[0].shape[0] if arrays[0].ndim == 1 else -1
    arrays.append(np.ones(max(n, 0), bool) if valid is None else np.asarray(valid, bool))
    if targets is not None:
        arrays.append(np.asarray(targets))
    if n <= 0 or any(a.shape != (n,) for a in arrays):
        shapes = [a.shape for a in arrays]
        raise ValueError(f"need non-empty 1-D arrays of one length, got shapes {shapes}")
    labels, clean_pred, adv_pred, linf, l2, model_calls, valid = arrays[:7]
    bad = valid & ~(np.isfinite(linf) & np.isfinite(l2))
    if np.any(bad):
        raise ValueError(f"non-finite perturbation norms at examples {np.flatnonzero(bad)}")
    correct = (clean_pred == labels) & valid
    hit = adv_pred == arrays[7] if targets is not None else adv_pred != labels
    fooled = correct & hit
    robust = correct & (adv_pred == labels)
    n_correct, n_fooled, n_robust = int(correct.sum()), int(fooled.sum()), int(robust.sum())

    def stat(fn, values):
        return float(fn(values[fooled])) if n_fooled else None

    return Summary(
        examples=n,
        clean_correct=n_correct,
        fooled=n_fooled,
        robust=n_robust,
        invalid=int(n - valid.sum()),
        clean_accuracy=n_correct / n,
        robust_accuracy=n_robust / n,
        asr=n_fooled / n_correct if n_correct else None,
        clean_accuracy_ci=wilson_interval(n_correct, n),
        robust_accuracy_ci=wilson_interval(n_robust, n),
        asr_ci=wilson_interval(n_fooled, n_correct),
        mean_linf=stat(np.mean, linf),
        median_linf=stat(np.median, linf),
        mean_l2=stat(np.mean, l2),
        median_l2=stat(np.median, l2),
        mean_model_calls=float(np.mean(model_calls)),
    )


def summarize_result(result, labels, targets=None) -> Summary:
    """:func:`summarize` of an :class:`~diffjax.attacks.interface.AttackResult`; examples whose
    clean or adversarial logits are not finite are invalid."""
    clean_logits, logits = np.asarray(result.clean_logits), np.asarray(result.logits)
    return summarize(
        labels,
        np.argmax(clean_logits, axis=1),
        np.argmax(logits, axis=1),
        result.linf,
        result.l2,
        result.model_calls,
        targets,
        valid=np.isfinite(clean_logits).all(axis=1) & np.isfinite(logits).all(axis=1),
    )
