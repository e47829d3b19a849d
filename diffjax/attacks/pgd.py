"""Projected gradient descent (Madry et al. 2018) in ℓ∞ or ℓ2, with restarts and best tracking.

    result = pgd(model_fn, images, labels, key, PGDConfig(eps=4 / 255, steps=20))

Each restart starts from a uniform draw in the ε-ball (or the clean image), takes ``steps`` steps
x ← P(x + α·dir(∇loss)) with dir = sign (ℓ∞) or g/‖g‖₂ (ℓ2) and P the exact projection onto the
ε-ball ∩ [0, 1] box, and every iterate (including the last) is a candidate for the per-example
best (see :mod:`diffjax.attacks.tracking`). Restarts run only for examples not yet fooled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from diffjax.attacks import interface as itf
from diffjax.attacks import losses
from diffjax.attacks.projections import normalized_step, project, uniform_start
from diffjax.attacks.tracking import Best

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """PGD settings.

    Attributes:
      eps: radius of the threat model, pixel units on the [0, 1] scale (e.g. 4/255).
      norm: ``"linf"`` or ``"l2"``.
      steps: gradient steps per restart.
      step_size: α; ``None`` means 2.5·ε/steps (Madry et al.).
      restarts: independent random starts; later ones run only on examples not yet fooled.
      random_start: start uniformly in the ε-ball (else at the clean image; then restarts = 1).
      loss: ``"ce"``, ``"margin"`` (max_{i≠y} z_i − z_y), or a callable
        ``loss_fn(logits [B, K], labels [B]) -> [B]`` to maximise (given the targets when
        targeted, used as is).
      targeted: move toward ``targets`` (success = prediction equals the target).
    """

    eps: float
    norm: str = "linf"
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str | Callable = "ce"
    targeted: bool = False

    def __post_init__(self):
        itf.check_eps(self.eps)
        itf.check_norm(self.norm)
        itf.check_int("steps", self.steps, 1)
        itf.check_int("restarts", self.restarts, 1)
        itf.check_bool("random_start", self.random_start)
        itf.check_bool("targeted", self.targeted)
        if self.step_size is not None:
            itf.check_positive("step_size", self.step_size)
        if not callable(self.loss) and self.loss not in losses.LOSSES:
            raise ValueError(f"loss must be one of {sorted(losses.LOSSES)} or a callable")
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 without random_start would repeat the same run")

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / max(self.steps, 1)


def pgd_core(model, x0, label, target, key, cfg: PGDConfig, clean: Array, active: Array):
    """PGD on one example. ``clean`` are its clean logits; nothing runs unless ``active``.

    Returns (adv [H, W, C], adv logits [K], model calls, extras).
    """
    objective = losses.objective(cfg.loss, cfg.targeted)
    cls = target if cfg.targeted else label

    def loss_of(logits, cls):
        return objective(logits[None], cls[None])[0]

    def success_of(logits):
        return itf.succeeded(logits, label, target, cfg.targeted)

    def restart(carry):
        r, best, calls = carry
        if cfg.random_start:
            x = uniform_start(jax.random.fold_in(key, r), x0, cfg.eps, cfg.norm)
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
        return r + 1, best, calls + cfg.steps + 1

    def more(carry):
        r, best, _ = carry
        return active & (r < cfg.restarts) & ~best.success

    best = Best(x0, clean, loss_of(clean, cls), success_of(clean))
    _, best, calls = lax.while_loop(more, restart, (0, best, jnp.int32(0)))
    return best.x, best.logits, calls, {}


def _pgd_single(model, x0, label, target, key, cfg):
    clean = model(x0)
    adv, logits, calls, extras = pgd_core(model, x0, label, target, key, cfg, clean, True)
    return adv, logits, clean, calls + 1, extras


def pgd(model_fn, images, labels, key, config: PGDConfig, *, targets=None, ids=None):
    """Run PGD on a batch.

    Args:
      model_fn: images [B, H, W, C] in [0, 1] → logits [B, K].
      images: [B, H, W, C] in [0, 1].
      labels: [B] true classes.
      key: PRNG key.
      config: :class:`PGDConfig`.
      targets: [B] target classes (targeted attacks only).
      ids: [B] example identifiers for the per-example keys (default ``arange(B)``).

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``model_calls`` = 1 + (steps + 1) per
      restart run.
    """
    return itf.run_attack(
        _pgd_single, model_fn, images, labels, key, config, targets=targets, ids=ids
    )
