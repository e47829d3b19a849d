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

import jax

from diffjax.attack_config import AutoAttackConfig
from diffjax.attacks.apgd import APGDPhase
from diffjax.attacks.compaction import Plan, Stage, run_plan
from diffjax.attacks.fab import FABPhase
from diffjax.attacks.square import SquarePhase

Array = jax.Array

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
