"""AutoAttack (Croce & Hein, ICML 2020): standard (APGD-CE → APGD-T → FAB-T → Square, ℓ∞ or
ℓ2) and rand (APGD-CE → APGD-DLR with EOT over a randomised model's randomness).

    result = autoattack(model_fn, images, labels, key, AutoAttackConfig(eps=4 / 255))
    result.extras["stage"]   # index in config.sequence of the attack that fooled each example

    def noisy(x, keys):  # a randomised model: Gaussian input noise from per-example keys
        return model_fn(x + 0.05 * jax.vmap(jax.random.normal, (0, None))(keys, x.shape[1:]))
    result = autoattack(noisy, images, labels, key, AutoAttackConfig(8 / 255, version="rand"))

Each stage runs only on the examples still robust after the previous ones (clean-misclassified
examples are never attacked); an example keeps the first successful adversarial. Stage s of
example e uses the key fold_in(fold_in(key, ids[e]), s). Compacted (the default), every stage,
target and restart runs on the still-robust examples only, gathered into a smaller batch (see
:mod:`diffjax.attacks.compaction`); examples already fooled are charged no model calls.
"""

from __future__ import annotations

import dataclasses

import jax

from diffjax.attacks import interface as itf
from diffjax.attacks.apgd import APGDConfig, APGDPhase
from diffjax.attacks.compaction import Plan, Stage, run_plan
from diffjax.attacks.fab import FABConfig, FABPhase
from diffjax.attacks.square import SquareConfig, SquarePhase

Array = jax.Array

STANDARD = {
    "linf": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "l2": ("apgd-ce", "apgd-t", "fab-t", "square"),
}
RAND = ("apgd-ce", "apgd-dlr")  # the `rand` version, both with EOT
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
VERSIONS = ("standard", "rand")


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """AutoAttack settings (defaults: the standard version).

    Attributes:
      eps: radius, pixel units on the [0, 1] scale.
      norm: ``"linf"`` or ``"l2"``.
      version: ``"standard"`` (APGD-CE → APGD-T → FAB-T → Square, deterministic models) or
        ``"rand"`` (APGD-CE → APGD-DLR, each with ``eot_iter`` EOT draws, for randomised
        models: the model function then takes ``(images, keys [B])``).
      stages: attacks in order, from ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ``"fab-t"``,
        ``"square"``; ``None`` for the version's sequence.
      steps: iterations of APGD and FAB runs.
      num_targets: targets of APGD-T and FAB-T.
      square_queries: Square's query budget.
      eot_iter: EOT draws per APGD gradient in the ``rand`` version.
    """

    eps: float
    norm: str = "linf"
    version: str = "standard"
    stages: tuple[str, ...] | None = None
    steps: int = 100
    num_targets: int = 9
    square_queries: int = 5000
    eot_iter: int = 20

    def __post_init__(self):
        itf.check_norm(self.norm)
        itf.check_eps(self.eps, self.norm)
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        itf.check_int("steps", self.steps, 1)
        itf.check_int("num_targets", self.num_targets, 1)
        itf.check_int("square_queries", self.square_queries, 0)
        itf.check_int("eot_iter", self.eot_iter, 1)
        if self.stages is not None:
            if not isinstance(self.stages, tuple) or not self.stages:
                raise ValueError("stages must be a non-empty tuple of attack names")
            bad = [s for s in self.stages if s not in STAGES]
            if bad:
                raise ValueError(f"unknown stages {bad}; choose from {STAGES}")
            if self.version == "rand" and any(s in ("fab-t", "square") for s in self.stages):
                raise ValueError("the rand version runs the APGD stages only (they have EOT)")

    @property
    def sequence(self) -> tuple[str, ...]:
        if self.stages is not None:
            return self.stages
        return STANDARD[self.norm] if self.version == "standard" else RAND

    @property
    def randomized(self) -> bool:
        return self.version == "rand"

    def stage_config(self, name: str):
        """The config of one stage, with AutoAttack's settings (one run per target)."""
        eot = self.eot_iter if self.randomized else 1
        if name in ("apgd-ce", "apgd-dlr"):
            loss = "ce" if name == "apgd-ce" else "dlr"
            return APGDConfig(self.eps, self.norm, self.steps, loss=loss, eot_iter=eot)
        if name == "apgd-t":
            return APGDConfig(
                self.eps,
                self.norm,
                self.steps,
                loss="dlr-targeted",
                num_targets=self.num_targets,
                eot_iter=eot,
            )
        if name == "fab-t":
            return FABConfig(self.eps, self.norm, self.steps, num_targets=self.num_targets)
        return SquareConfig(self.eps, self.square_queries, norm=self.norm)

    @property
    def min_classes(self) -> int:
        targeted = any(s in ("apgd-t", "fab-t") for s in self.sequence)
        if targeted:
            return max(4, self.num_targets + 1)
        return 3 if "apgd-dlr" in self.sequence else 2


PHASES = {
    "apgd-ce": APGDPhase,
    "apgd-dlr": APGDPhase,
    "apgd-t": APGDPhase,
    "fab-t": FABPhase,
    "square": SquarePhase,
}


def plan(config: AutoAttackConfig) -> Plan:
    """Stage s of example e uses the key fold_in(fold_in(key, ids[e]), s)."""
    stages = tuple(
        Stage(PHASES[name], config.stage_config(name), salt=s)
        for s, name in enumerate(config.sequence)
    )
    return Plan(
        stages,
        first_success=True,
        randomized=config.randomized,
        min_classes=config.min_classes,
    )


def autoattack(model_fn, images, labels, key, config: AutoAttackConfig, *, ids=None, eps=None,
               compact=True):  # fmt: skip
    """Run the AutoAttack sequence on a batch (untargeted); arguments as
    :func:`diffjax.attacks.pgd.pgd`.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``extras["stage"]`` is the index in
      ``config.sequence`` of the stage that fooled the example (−1: not fooled, or misclassified
      from the start).
    """
    return run_plan(plan(config), model_fn, images, labels, key, ids=ids, eps=eps, compact=compact)
