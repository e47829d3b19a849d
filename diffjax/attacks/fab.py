"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), ℓ∞ or ℓ2.

    result = fab_targeted(model_fn, images, labels, key, FABConfig(eps=4 / 255))

A minimal-norm attack: for a target t (the 2nd, 3rd, … most likely clean class), each iteration
linearises g = z_t − z_y at the iterate x_k and projects both x_k and the clean x onto the
hyperplane g(x_k) + ∇g·(x − x_k) = 0 inside the box (exact box-constrained projections, see
:func:`~diffjax.attacks.projections.project_hyperplane_box`), giving steps d_k and d_0; then

    α = min(‖d_k‖/(‖d_k‖ + ‖d_0‖), α_max),  x_{k+1} = clip((1 − α)(x_k + η·d_k) + α(x + η·d_0))

and, when x_{k+1} is adversarial, records it if it is the smallest so far and pulls it back toward
x by the factor β. The first run per target starts at x, later restarts at a random point at
distance ε/2. Success means an adversarial example within ε was found (as in AutoAttack);
otherwise the clean image is returned. Each iteration costs two model calls (gradient at x_k,
prediction at x_{k+1}).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from diffjax.attack_config import FABConfig
from diffjax.attacks import interface as itf
from diffjax.attacks import losses
from diffjax.attacks.compaction import Example, Plan, Stage, run_plan
from diffjax.attacks.projections import norm_of, project_hyperplane_box

Array = jax.Array

MIN_STEP_NORM = 1e-8  # FAB's floor on ‖d‖ in α's ratio


def _gap(logits, t, label):
    """g = z_t − z_y."""
    return losses.label_logit(logits, t) - losses.label_logit(logits, label)


class FABPhase:
    """FAB-T as a stage: one segment per run (target × restart); carry (best image, its logits,
    its norm, model calls)."""

    @staticmethod
    def segments(cfg: FABConfig) -> int:
        return cfg.runs

    @staticmethod
    def init(model, ex: Example, cfg: FABConfig):
        clean_success = itf.succeeded(ex.clean, ex.label, ex.label, False)
        best_norm = jnp.where(clean_success, 0.0, jnp.inf).astype(jnp.float32)
        return ex.x0, ex.clean, best_norm, jnp.int32(0)

    @staticmethod
    def done(ex: Example, cfg: FABConfig, carry) -> Array:
        return carry[2] <= cfg.eps

    @staticmethod
    def output(ex: Example, cfg: FABConfig, carry):
        best_x, best_logits, best_norm, calls = carry
        found = best_norm <= cfg.eps
        return jnp.where(found, best_x, ex.x0), jnp.where(found, best_logits, ex.clean), calls

    @staticmethod
    def segment(model, ex: Example, cfg: FABConfig, carry, run: Array):
        best_x, best_logits, best_norm, calls = carry
        x0, label, key = ex.x0, ex.label, ex.key
        t = jnp.argsort(-ex.clean)[1 + run // cfg.restarts]
        if cfg.norm == "linf":
            u = jax.random.uniform(jax.random.fold_in(key, run), x0.shape, x0.dtype, -1.0, 1.0)
        else:
            u = jax.random.normal(jax.random.fold_in(key, run), x0.shape, x0.dtype)
        start = jnp.clip(x0 + 0.5 * cfg.eps * u / jnp.maximum(norm_of(u, cfg.norm), 1e-30), 0, 1)
        x = jnp.where(run % cfg.restarts == 0, x0, start)

        def step(_, s):
            x, best_x, best_logits, best_norm = s
            g, _, grad = model.value_and_grad(_gap, x, t, label)
            b = jnp.vdot(grad, x) - g
            d_x = project_hyperplane_box(x, grad, b, cfg.norm)
            d_0 = project_hyperplane_box(x0, grad, b, cfg.norm)
            a_x = jnp.maximum(norm_of(d_x, cfg.norm), MIN_STEP_NORM)
            a_0 = jnp.maximum(norm_of(d_0, cfg.norm), MIN_STEP_NORM)
            alpha = jnp.clip(a_x / (a_x + a_0), 0.0, cfg.alpha_max)
            x = (1 - alpha) * (x + cfg.eta * d_x) + alpha * (x0 + cfg.eta * d_0)
            x = jnp.clip(x, 0.0, 1.0)
            logits = model(x)
            adversarial = itf.succeeded(logits, label, label, False)
            n = norm_of(x - x0, cfg.norm)
            smaller = adversarial & (n < best_norm)
            best_x = jnp.where(smaller, x, best_x)
            best_logits = jnp.where(smaller, logits, best_logits)
            best_norm = jnp.where(smaller, n, best_norm)
            x = jnp.where(adversarial, x0 + (x - x0) * cfg.beta, x)
            return x, best_x, best_logits, best_norm

        _, best_x, best_logits, best_norm = lax.fori_loop(
            0, cfg.steps, step, (x, best_x, best_logits, best_norm)
        )
        return best_x, best_logits, best_norm, calls + 2 * cfg.steps


def plan(config: FABConfig) -> Plan:
    return Plan((Stage(FABPhase, config),), min_classes=config.num_targets + 1)


def fab_targeted(model_fn, images, labels, key, config: FABConfig, *, ids=None, eps=None,
                 compact=True):  # fmt: skip
    """Run FAB-T on a batch (success = misclassified within ε); arguments as
    :func:`diffjax.attacks.pgd.pgd`.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``model_calls`` = 1 + 2·steps per run.
    """
    return run_plan(plan(config), model_fn, images, labels, key, ids=ids, eps=eps, compact=compact)
