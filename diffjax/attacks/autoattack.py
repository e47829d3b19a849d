"""AutoAttack (Croce & Hein, ICML 2020), standard version: APGD-CE → APGD-T → FAB-T → Square.

    result = autoattack(model_fn, images, labels, key, AutoAttackConfig(eps=4 / 255))
    result.extras["stage"]   # index in config.stages of the attack that fooled each example

Each stage runs only on the examples still robust after the previous ones (clean-misclassified
examples are never attacked); an example keeps the first successful adversarial. Stage s of
example e uses the key fold_in(fold_in(key, ids[e]), s). Under ``vmap`` a stage still evaluates
the model for the whole batch while any example in it is active; examples already fooled are
masked and charged no model calls.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.attacks import interface as itf
from diffjax.attacks.apgd import APGDConfig, apgd_core
from diffjax.attacks.fab import FABConfig, fab_core
from diffjax.attacks.square import SquareConfig, square_core

Array = jax.Array

STANDARD = {
    "linf": ("apgd-ce", "apgd-t", "fab-t", "square"),
    # AutoAttack's ℓ2 version ends with Square-ℓ2, which is not implemented here.
    "l2": ("apgd-ce", "apgd-t", "fab-t"),
}
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """AutoAttack settings (defaults: the standard version).

    Attributes:
      eps: radius, pixel units on the [0, 1] scale.
      norm: ``"linf"`` or ``"l2"``.
      stages: attacks in order, from ``"apgd-ce"``, ``"apgd-t"``, ``"fab-t"``, ``"square"``
        (ℓ∞ only); ``None`` for the standard sequence of the norm.
      steps: iterations of APGD and FAB runs.
      num_targets: targets of APGD-T and FAB-T.
      square_queries: Square's query budget.
    """

    eps: float
    norm: str = "linf"
    stages: tuple[str, ...] | None = None
    steps: int = 100
    num_targets: int = 9
    square_queries: int = 5000

    def __post_init__(self):
        itf.check_eps(self.eps)
        itf.check_norm(self.norm)
        itf.check_int("steps", self.steps, 1)
        itf.check_int("num_targets", self.num_targets, 1)
        itf.check_int("square_queries", self.square_queries, 0)
        if self.stages is not None:
            if not isinstance(self.stages, tuple) or not self.stages:
                raise ValueError("stages must be a non-empty tuple of attack names")
            bad = [s for s in self.stages if s not in STAGES]
            if bad:
                raise ValueError(f"unknown stages {bad}; choose from {STAGES}")
            if "square" in self.stages and self.norm != "linf":
                raise ValueError("Square is implemented for the ℓ∞ norm only")

    @property
    def sequence(self) -> tuple[str, ...]:
        return self.stages if self.stages is not None else STANDARD[self.norm]

    def stage_config(self, name: str):
        """The config of one stage, with AutoAttack's settings (one run per target)."""
        if name == "apgd-ce":
            return APGDConfig(self.eps, self.norm, self.steps, loss="ce")
        if name == "apgd-t":
            return APGDConfig(
                self.eps, self.norm, self.steps, loss="dlr-targeted", num_targets=self.num_targets
            )
        if name == "fab-t":
            return FABConfig(self.eps, self.norm, self.steps, num_targets=self.num_targets)
        return SquareConfig(self.eps, self.square_queries)

    @property
    def min_classes(self) -> int:
        targeted = any(s in ("apgd-t", "fab-t") for s in self.sequence)
        return max(4, self.num_targets + 1) if targeted else 2


CORES = {"apgd-ce": apgd_core, "apgd-t": apgd_core, "fab-t": fab_core, "square": square_core}


def _autoattack_single(model, x0, label, target, key, cfg: AutoAttackConfig):
    clean = model(x0)
    success = itf.succeeded(clean, label, label, False)
    adv, logits, calls, stage = x0, clean, jnp.int32(1), jnp.int32(-1)
    for s, name in enumerate(cfg.sequence):
        adv_s, logits_s, calls_s, _ = CORES[name](
            model,
            x0,
            label,
            target,
            jax.random.fold_in(key, s),
            cfg.stage_config(name),
            clean,
            ~success,
        )
        new = ~success & itf.succeeded(logits_s, label, label, False)
        adv = jnp.where(new, adv_s, adv)
        logits = jnp.where(new, logits_s, logits)
        stage = jnp.where(new, s, stage)
        success = success | new
        calls = calls + calls_s
    return adv, logits, clean, calls, {"stage": stage}


def autoattack(model_fn, images, labels, key, config: AutoAttackConfig, *, ids=None):
    """Run the AutoAttack sequence on a batch (untargeted); arguments as
    :func:`diffjax.attacks.pgd.pgd`.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``extras["stage"]`` is the index in
      ``config.sequence`` of the stage that fooled the example (−1: not fooled, or misclassified
      from the start).
    """
    return itf.run_attack(
        _autoattack_single,
        model_fn,
        images,
        labels,
        key,
        config,
        ids=ids,
        min_classes=config.min_classes,
    )
