"""Adversarial attacks in pure JAX with one interface and exact success accounting.

    from diffjax import attacks
    model_fn = attacks.model_function(model)   # or any images [B, H, W, C] -> logits [B, K]
    result = attacks.pgd(model_fn, images, labels, jax.random.key(0), attacks.PGDConfig(4 / 255))
    summary = attacks.summarize_result(result, labels)

Every attack takes (model_fn, images in [0, 1], labels, key, config) and returns an
:class:`AttackResult` with one entry per example; see :mod:`diffjax.attacks.interface`.
"""

from diffjax.attack_config import ATTACKS, AttackSpec, attack_config, build_attack
from diffjax.attacks.accounting import Summary, summarize, summarize_result, wilson_interval
from diffjax.attacks.apgd import APGDConfig, apgd
from diffjax.attacks.autoattack import AutoAttackConfig, autoattack
from diffjax.attacks.budgets import attack_epsilons
from diffjax.attacks.compaction import Plan, Stage, bucket_size, run_plan
from diffjax.attacks.cw import CWConfig, cw_l2
from diffjax.attacks.evaluate import (
    AttackCheckError,
    attack_dataset,
    recheck,
    summarize_records,
)
from diffjax.attacks.fab import FABConfig, fab_targeted
from diffjax.attacks.interface import AttackResult, model_function
from diffjax.attacks.losses import cross_entropy, dlr, dlr_targeted, margin
from diffjax.attacks.pgd import PGDConfig, pgd
from diffjax.attacks.projections import project, uniform_start
from diffjax.attacks.robustbench import BenchmarkResult, benchmark
from diffjax.attacks.square import SquareConfig, square

__all__ = [
    "ATTACKS",
    "APGDConfig",
    "AttackSpec",
    "AttackCheckError",
    "AttackResult",
    "AutoAttackConfig",
    "BenchmarkResult",
    "CWConfig",
    "FABConfig",
    "PGDConfig",
    "Plan",
    "SquareConfig",
    "Stage",
    "Summary",
    "apgd",
    "attack_dataset",
    "attack_epsilons",
    "autoattack",
    "benchmark",
    "bucket_size",
    "attack_config",
    "build_attack",
    "cross_entropy",
    "cw_l2",
    "dlr",
    "dlr_targeted",
    "fab_targeted",
    "margin",
    "model_function",
    "pgd",
    "project",
    "recheck",
    "run_plan",
    "square",
    "summarize",
    "summarize_records",
    "summarize_result",
    "uniform_start",
    "wilson_interval",
]
