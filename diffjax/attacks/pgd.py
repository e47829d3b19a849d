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
from diffjax.attacks.compaction import Example, Plan, Stage, run_plan
from diffjax.attacks.projections import normalized_step, project, uniform_start
from diffjax.attacks.tracking import Best

Array = jax.Array

L2_STEP_FRACTION = 0.25  # PGD-ℓ2's default step is at least ε/4 (see PGDConfig)


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """PGD settings.

    Attributes:
      eps: radius of the threat model, pixel units on the [0, 1] scale (e.g. 4/255).
      norm: ``"linf"`` or ``"l2"``.
      steps: gradient steps per restart.
      step_size: α; ``None`` chooses by norm (see below).
      restarts: independent random starts; later ones run only on examples not yet fooled.
      random_start: start uniformly in the ε-ball (else at the clean image; then restarts = 1).
      loss: ``"ce"``, ``"margin"`` (max_{i≠y} z_i − z_y), or a callable
        ``loss_fn(logits [B, K], labels [B]) -> [B]`` to maximise (given the targets when
        targeted, used as is).
      targeted: move toward ``targets`` (success = prediction equals the target).

    Default step sizes:

    * ℓ∞: α = 2.5·ε/steps (Madry et al. 2018, Appendix A): sign steps move every coordinate by α,
      so a path of 2.5ε reaches any vertex of the ε-cube from any start with room to spare.
    * ℓ2: α = max(2.5/steps, 1/4)·ε. Madry's rule fails in ℓ2 because from a random start (whose
      direction is almost orthogonal to the gradient in high dimension) the iterate has to
      *rotate* on the sphere of radius ε toward the best direction, and a step of α followed by
      the projection turns the angle θ to the optimum into atan(sin θ / (cos θ + α/ε)), i.e.
      shrinks it by the factor ≈ 1/(1 + α/ε) per step whatever the number of steps. With
      α = 2.5ε/steps the total contraction stays ≈ e^(−2.5) however many steps are taken (only
      13/40 examples of a linear two-class model are fooled at 1.02× their minimal ℓ2 distance,
      7/40 with 1,000 steps). A step that is a fixed fraction of ε makes the contraction
      geometric in the number of steps: with α = ε/4, θ goes from π/2 to 0.02 rad in 20 steps
      (cos θ = 0.9998, so 1.02× the minimal distance is plenty; 10 steps reach 0.198 rad, the
      1.02× limit acos(1/1.02)). The fraction ε/4 is of the size torchattacks uses for PGD-ℓ2
      (α = 0.2, ε = 1.0) and far below APGD's initial step 2ε (Croce & Hein 2020), so
      non-linear models are not overshot more than by those. Below 10 steps Madry's larger
      2.5ε/steps is kept.
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
        itf.check_norm(self.norm)
        itf.check_eps(self.eps, self.norm)
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
        madry = 2.5 * self.eps / max(self.steps, 1)
        if self.norm == "l2":
            return jnp.maximum(madry, L2_STEP_FRACTION * self.eps)
        return madry


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
