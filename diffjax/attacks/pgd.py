"""Projected gradient descent (Madry et al. 2018) in ℓ∞ or ℓ2, with restarts and best tracking.

    result = pgd(model_fn, images, labels, key, PGDConfig(eps=4 / 255, steps=20))

Each restart starts from a uniform draw in the ε-ball (or the clean image), takes ``steps`` steps
x ← P(x + α·dir(∇loss)) with dir = sign (ℓ∞) or g/‖g‖₂ (ℓ2) and P the exact projection onto the
ε-ball ∩ [0, 1] box, and every iterate (including the last) is a candidate for the per-example
best (see :mod:`diffjax.attacks.tracking`). Restarts run only for examples not yet fooled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from diffjax.attack_config import PGDConfig
from diffjax.attacks import interface as itf
from diffjax.attacks import losses
from diffjax.attacks.compaction import Example, Plan, Stage, run_plan
from diffjax.attacks.projections import normalized_step, project, uniform_start
from diffjax.attacks.tracking import Best

Array = jax.Array


def _loss_fn(cfg: PGDConfig):
    """The per-example objective ``loss(logits [K], cls) -> scalar`` (cls: label or target)."""
    objective = losses.objective(cfg.loss, cfg.targeted)
    return lambda logits, cls: objective(logits[None], cls[None])[0]


class PGDPhase:
    """PGD as a stage: one segment per restart; carry (Best, model calls)."""

    @staticmethod
    def segments(cfg: PGDConfig) -> int:
        return cfg.restarts

    @staticmethod
    def init(model, ex: Example, cfg: PGDConfig):
        success = itf.succeeded(ex.clean, ex.label, ex.target, cfg.targeted)
        cls = ex.target if cfg.targeted else ex.label
        return Best(ex.x0, ex.clean, _loss_fn(cfg)(ex.clean, cls), success), jnp.int32(0)

    @staticmethod
    def done(ex: Example, cfg: PGDConfig, carry) -> Array:
        return carry[0].success

    @staticmethod
    def segment(model, ex: Example, cfg: PGDConfig, carry, r: Array):
        best, calls = carry
        x0, loss_of = ex.x0, _loss_fn(cfg)
        cls = ex.target if cfg.targeted else ex.label

        def success_of(logits):
            return itf.succeeded(logits, ex.label, ex.target, cfg.targeted)

        if cfg.random_start:
            x = uniform_start(jax.random.fold_in(ex.key, r), x0, cfg.eps, cfg.norm)
        else:
            x = x0

        def step(_, c):
            x, best = c
            loss, logits, grad = model.value_and_grad(loss_of, x, cls)
            best = best.update(x, logits, loss, success_of(logits))
            x = project(x + cfg.alpha * normalized_step(grad, cfg.norm), x0, cfg.eps, cfg.norm)
            return x, best

        x, best = lax.fori_loop(0, cfg.steps, step, (x, best))
        logits = model(x)
        best = best.update(x, logits, loss_of(logits, cls), success_of(logits))
        return best, calls + cfg.steps + 1

    @staticmethod
    def output(ex: Example, cfg: PGDConfig, carry):
        best, calls = carry
        return best.x, best.logits, calls


def plan(config: PGDConfig) -> Plan:
    return Plan((Stage(PGDPhase, config),), targeted=config.targeted)


def pgd(model_fn, images, labels, key, config: PGDConfig, *, targets=None, ids=None, eps=None,
        compact=True):  # fmt: skip
    """Run PGD on a batch.

    Args:
      model_fn: images [B, H, W, C] in [0, 1] → logits [B, K].
      images: [B, H, W, C] in [0, 1].
      labels: [B] true classes.
      key: PRNG key.
      config: :class:`PGDConfig`.
      targets: [B] target classes (targeted attacks only).
      ids: [B] example identifiers for the per-example keys (default ``arange(B)``).
      eps: [B] per-example radii replacing ``config.eps`` (see :func:`attack_epsilons`).
      compact: restarts run only on the examples not yet fooled, gathered into a smaller batch
        (same per-example results; see :mod:`diffjax.attacks.compaction`).

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``model_calls`` = 1 + (steps + 1) per
      restart run.
    """
    return run_plan(
        plan(config), model_fn, images, labels, key, targets=targets, ids=ids, eps=eps,
        compact=compact,
    )  # fmt: skip
