"""Robust accuracy in the RobustBench convention: standard AutoAttack on the first n test images.

    result = attacks.benchmark(model_fn, "cifar10", threat_model="Linf", eps=8 / 255)
    result.clean_accuracy, result.robust_accuracy, result.per_attack, result.robustbench_json()

Conventions (Croce et al., RobustBench, NeurIPS 2021 Datasets and Benchmarks):

* the model takes images in [0, 1] and normalises inside (diffjax's ViT does: ``config.mean``,
  ``config.std``), so ε is measured in [0, 1] pixel units;
* the first ``n_examples`` images of the test split, in order;
* threat models ``"Linf"`` (default ε = 8/255) and ``"L2"`` (default ε = 0.5), standard
  AutoAttack (APGD-CE → APGD-T → FAB-T → Square, 100 iterations, 9 targets, 5,000 queries);
* robust accuracy = #{correct on the clean image AND on the adversarial one} / n, over ALL n
  examples; a misclassified clean image counts as broken. This differs from diffjax's attack
  success rate (:func:`diffjax.attacks.summarize`): ASR = fooled / #{clean correct}, over the
  initially correct examples only, so robust accuracy = clean accuracy × (1 − ASR).

Every adversarial image is re-checked outside the attack (:func:`diffjax.attacks.recheck`).
"""

from __future__ import annotations

import dataclasses
import fractions
import json
from collections.abc import Callable

import jax
import numpy as np

from diffjax.attacks.accounting import Summary, wilson_interval
from diffjax.attacks.autoattack import AutoAttackConfig, autoattack
from diffjax.attacks.evaluate import attack_dataset, summarize_records

THREAT_MODELS = {"Linf": "linf", "L2": "l2"}
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Outcome of :func:`benchmark`.

    Attributes:
      dataset, threat_model, eps, n_examples: what was measured.
      clean_accuracy, robust_accuracy: fractions of ``n_examples`` (robust: over all of them).
      robust_accuracy_ci: 95 % Wilson interval of the robust accuracy.
      per_attack: one entry per AutoAttack stage, in order: ``{"attack", "fooled" (examples that
        stage fooled first), "robust_accuracy_after" (robust accuracy after it)}``.
      summary: :class:`~diffjax.attacks.Summary` (ASR over the initially correct examples,
        norms, model calls).
      records: the per-example arrays of :func:`diffjax.attacks.attack_dataset`.
      model_name, architecture: free text for the JSON entry.
    """

    dataset: str
    threat_model: str
    eps: float
    n_examples: int
    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_ci: tuple[float, float]
    per_attack: tuple[dict, ...]
    summary: Summary
    records: dict = dataclasses.field(repr=False)
    model_name: str = ""
    architecture: str = ""

    def robustbench_json(self) -> dict:
        """The fields of a RobustBench model-info JSON entry (accuracies as percent strings
        with two decimals, ε as a fraction string such as ``"8/255"``)."""
        return {
            "name": self.model_name,
            "architecture": self.architecture,
            "dataset": self.dataset,
            "threat_model": self.threat_model,
            "eps": eps_string(self.eps),
            "clean_acc": f"{100 * self.clean_accuracy:.2f}",
            "reported": f"{100 * self.robust_accuracy:.2f}",
            "autoattack_acc": f"{100 * self.robust_accuracy:.2f}",
            "additional_data": False,
            "number_forward_passes": 1,
            "n_examples": self.n_examples,
        }

    def as_dict(self) -> dict:
        """JSON-ready: the numbers, the per-attack breakdown, the summary and the RobustBench
        entry (no per-example records)."""
        return {
            "dataset": self.dataset,
            "threat_model": self.threat_model,
            "eps": self.eps,
            "n_examples": self.n_examples,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_ci": list(self.robust_accuracy_ci),
            "per_attack": list(self.per_attack),
            "summary": self.summary.as_dict(),
            "robustbench": self.robustbench_json(),
        }


def eps_string(eps: float) -> str:
    """``"8/255"`` for radii that are k/255, else the number (RobustBench writes ε that way)."""
    f = fractions.Fraction(eps).limit_denominator(255)
    if f.denominator == 255 and abs(float(f) - eps) < 1e-9:
        return f"{f.numerator}/255"
    return f"{eps:g}"


def benchmark(
    model_fn: Callable,
    dataset,
    *,
    threat_model: str = "Linf",
    eps: float | None = None,
    n_examples: int = 10000,
    key=None,
    batch_size: int = 500,
    config: AutoAttackConfig | None = None,
    data_dir: str | None = None,
    model_name: str = "",
    architecture: str = "",
    on_batch: Callable[[int, int], None] | None = None,
) -> BenchmarkResult:
    """Clean and robust accuracy of ``model_fn`` under standard AutoAttack, RobustBench style.

    Args:
      model_fn: images [B, H, W, C] in [0, 1] → logits [B, K], normalising inside (e.g.
        ``attacks.model_function(vit)``).
      dataset: a :class:`diffjax.data.Dataset` (its images are used as given) or a
        :func:`diffjax.data.load_dataset` name, whose ``"test"`` split is used.
      threat_model: ``"Linf"`` or ``"L2"``.
      eps: radius in [0, 1] pixel units; default 8/255 (Linf) or 0.5 (L2).
      n_examples: the first n test images (all if the split is smaller).
      key: PRNG key of the attack (default ``jax.random.key(0)``).
      batch_size: images per attack call (a multiple of the device count); AutoAttack is
        compacted inside each batch, so large batches are cheap.
      config: an AutoAttack config to use instead of the standard one (its ``norm`` and ``eps``
        must match ``threat_model`` and ``eps``), e.g. fewer steps for a smoke test.
      data_dir: where :func:`~diffjax.data.load_dataset` looks when ``dataset`` is a name.
      model_name, architecture: recorded in the RobustBench JSON entry.
      on_batch: progress callback ``(batches done, total)``.

    Raises:
      ValueError: unknown threat model, bad ε or n, or a config that contradicts them.
    """
    from diffjax.data import Dataset, load_dataset

    if threat_model not in THREAT_MODELS:
        raise ValueError(
            f"threat_model must be one of {sorted(THREAT_MODELS)}, got {threat_model!r}"
        )
    norm = THREAT_MODELS[threat_model]
    eps = DEFAULT_EPS[threat_model] if eps is None else eps
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples <= 0:
        raise ValueError(f"n_examples must be a positive integer, got {n_examples!r}")
    if config is None:
        config = AutoAttackConfig(eps, norm)
    elif config.norm != norm or config.eps != eps:
        raise ValueError(
            f"config has norm {config.norm!r}, eps {config.eps}; the benchmark asks for "
            f"{threat_model} ({norm!r}) at eps {eps}"
        )
    if config.version != "standard":
        raise ValueError("the benchmark runs deterministic models (version='standard')")
    if isinstance(dataset, str):
        name, data = dataset, load_dataset(dataset, "test", data_dir)
    elif isinstance(dataset, Dataset):
        name, data = dataset.name, dataset
    else:
        raise ValueError(
            f"dataset must be a Dataset or a dataset name, got {type(dataset).__name__}"
        )
    data = data.take(min(n_examples, len(data)))
    key = jax.random.key(0) if key is None else key
    batch_size = min(batch_size, -(-len(data) // jax.device_count()) * jax.device_count())
    records = attack_dataset(autoattack, model_fn, data.images, data.labels, key, config,
                             batch_size=batch_size, on_batch=on_batch)  # fmt: skip
    n = len(data)
    correct = records["clean_pred"] == records["label"]
    robust = correct & (records["adv_pred"] == records["label"])
    stages, per_attack = np.asarray(records["stage"]), []
    remaining = int(correct.sum())
    for s, attack in enumerate(config.sequence):
        fooled = int(np.sum(correct & (stages == s)))
        remaining -= fooled
        per_attack.append(
            {"attack": attack, "fooled": fooled, "robust_accuracy_after": remaining / n}
        )
    return BenchmarkResult(
        dataset=name,
        threat_model=threat_model,
        eps=float(eps),
        n_examples=n,
        clean_accuracy=float(correct.mean()),
        robust_accuracy=float(robust.mean()),
        robust_accuracy_ci=wilson_interval(int(robust.sum()), n),
        per_attack=tuple(per_attack),
        summary=summarize_records(records),
        records=records,
        model_name=model_name,
        architecture=architecture,
    )


def write_json(result: BenchmarkResult, path) -> None:
    """Write :meth:`BenchmarkResult.as_dict` to ``path``."""
    with open(path, "w") as f:
        json.dump(result.as_dict(), f, indent=1)
