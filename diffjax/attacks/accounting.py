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


@dataclasses.dataclass(frozen=True)
class Summary:
    """Aggregate numbers of one attack over n examples (definitions in the module docstring)."""

    examples: int
    clean_correct: int
    fooled: int
    robust: int
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


def summarize(labels, clean_pred, adv_pred, linf, l2, model_calls, targets=None) -> Summary:
    """Aggregate per-example records.

    Args:
      labels, clean_pred, adv_pred: [n] integer classes.
      linf, l2: [n] perturbation norms.
      model_calls: [n] model evaluations per example.
      targets: [n] target classes for a targeted attack, else ``None``.

    Raises:
      ValueError: empty input or arrays of different lengths.
    """
    arrays = [np.asarray(a) for a in (labels, clean_pred, adv_pred, linf, l2, model_calls)]
    if targets is not None:
        arrays.append(np.asarray(targets))
    n = arrays[0].shape[0] if arrays[0].ndim == 1 else -1
    if n <= 0 or any(a.shape != (n,) for a in arrays):
        shapes = [a.shape for a in arrays]
        raise ValueError(f"need non-empty 1-D arrays of one length, got shapes {shapes}")
    labels, clean_pred, adv_pred, linf, l2, model_calls = arrays[:6]
    correct = clean_pred == labels
    hit = adv_pred == arrays[6] if targets is not None else adv_pred != labels
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
    """:func:`summarize` of an :class:`~diffjax.attacks.interface.AttackResult`."""
    return summarize(
        labels,
        np.argmax(np.asarray(result.clean_logits), axis=1),
        np.argmax(np.asarray(result.logits), axis=1),
        result.linf,
        result.l2,
        result.model_calls,
        targets,
    )
