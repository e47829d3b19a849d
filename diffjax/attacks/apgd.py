"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and APGD-T (targeted DLR).

    result = apgd(model_fn, images, labels, key, APGDConfig(eps=4 / 255))                 # APGD-CE
    result = apgd(model_fn, images, labels, key, APGDConfig(eps=4 / 255, loss="dlr-targeted"))

One run, N = ``steps`` iterations, from x₀ = x + ε·t/‖t‖_p (t ~ U[−1, 1]^d for ℓ∞, N(0, I) for ℓ2),
clipped to the box, with step size η = 2ε:

    z = P(x_k + η·dir(∇f(x_k))),   x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))

with α = 1 at the first step and 0.75 after. At the checkpoints (the first after ⌊0.22N⌋
iterations, each next window shorter by ⌊0.03N⌋ down to ⌊0.06N⌋) η is halved, and the run goes on
from the best-loss point and its gradient, when the loss increased in at most ρ = 75 % of the
window's steps or when η was not halved at the previous checkpoint and the best loss did not
improve since. Runs stop for an example once it is fooled. APGD-T makes ``num_targets`` runs per
restart, targeting the 2nd, 3rd, … most likely clean classes with the targeted DLR loss;
its success is still untargeted (prediction ≠ label), as in AutoAttack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffjax.attack_config import APGDConfig
from diffjax.attacks import interface as itf
from diffjax.attacks import losses
from diffjax.attacks.compaction import Example, Plan, Stage, run_plan
from diffjax.attacks.projections import boundary_start, normalized_step, project
from diffjax.attacks.tracking import Best

Array = jax.Array


def checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Which iterations (0-based) end a checkpoint window, and that window's length.

    Returns:
      (is_checkpoint [steps] bool, window [steps] int32), AutoAttack's integer schedule.
    """
    window = max(int(0.22 * steps), 1)
    shortest, decrease = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    is_check = np.zeros(steps, bool)
    lengths = np.zeros(steps, np.int32)
    count = 0
    for i in range(steps):
        count += 1
        if count == window:
            is_check[i], lengths[i] = True, window
            window, count = max(window - decrease, shortest), 0
    return is_check, lengths


def _loss_of(cfg: APGDConfig):
    """Per-example loss(logits [K], label, run target) -> scalar."""

    def loss_of(logits, label, run_target):
        if cfg.loss == "ce":
            return losses.cross_entropy(logits, label)
        if cfg.loss == "dlr":
            return losses.dlr(logits, label)
        return losses.dlr_targeted(logits, label, run_target)

    return loss_of


class APGDPhase:
    """APGD as a stage: one segment per run (restart × target); carry (Best, model calls)."""

    @staticmethod
    def segments(cfg: APGDConfig) -> int:
        return cfg.runs

    @staticmethod
    def init(model, ex: Example, cfg: APGDConfig):
        ranked = jnp.argsort(-ex.clean)
        loss = _loss_of(cfg)(ex.clean, ex.label, ranked[1])
        success = itf.succeeded(ex.clean, ex.label, ex.label, False)
        return Best(ex.x0, ex.clean, loss, success), jnp.int32(0)

    @staticmethod
    def done(ex: Example, cfg: APGDConfig, carry) -> Array:
        return carry[0].success

    @staticmethod
    def output(ex: Example, cfg: APGDConfig, carry):
        best, calls = carry
        return best.x, best.logits, calls

    @staticmethod
    def segment(model, ex: Example, cfg: APGDConfig, carry, run: Array):
        best, calls = carry
        x0, label, key = ex.x0, ex.label, ex.key
        is_check, window = (jnp.asarray(a) for a in checkpoint_schedule(cfg.steps))
        ranked = jnp.argsort(-ex.clean)  # classes by clean logit, most likely first
        run_target = ranked[1 + run // cfg.restarts]
        loss_of = _loss_of(cfg)
        run_key = jax.random.fold_in(key, run)

        def success_of(logits):
            return itf.succeeded(logits, label, label, False)

        def value_grad(x, i):
            """Loss, logits and gradient at iterate i (0: the start); with EOT (randomised
            model) the loss and gradient are means over ``eot_iter`` draws and the logits the
            last draw's, as in Croce & Hein's code."""
            if not model.randomized:
                return model.value_and_grad(loss_of, x, label, run_target)
            draw_key = jax.random.fold_in(run_key, i + 1)

            def draw(j, acc):
                k = jax.random.fold_in(draw_key, j)
                loss, logits, grad = model.value_and_grad(loss_of, x, label, run_target, key=k)
                return acc[0] + loss, logits, acc[2] + grad

            zero = (jnp.float32(0), ex.clean, jnp.zeros_like(x))
            loss, logits, grad = lax.fori_loop(0, cfg.eot_iter, draw, zero)
            return loss / cfg.eot_iter, logits, grad / cfg.eot_iter

        def step(i, s):
            alpha = jnp.where(i == 0, 1.0, cfg.momentum)
            x, x_prev = s["x"], s["x_prev"]
            z = project(x + s["eta"] * normalized_step(s["grad"], cfg.norm), x0, cfg.eps, cfg.norm)
            x_new = project(x + alpha * (z - x) + (1 - alpha) * (x - x_prev), x0, cfg.eps, cfg.norm)
            loss, logits, grad = value_grad(x_new, i + 1)
            best = s["best"].update(x_new, logits, loss, success_of(logits))
            improved = loss > s["loss_max"]
            s = dict(
                s,
                x=x_new,
                x_prev=x,
                grad=grad,
                best=best,
                n_increase=s["n_increase"] + (loss > s["loss_prev"]),
                loss_prev=loss,
                x_max=jnp.where(improved, x_new, s["x_max"]),
                grad_max=jnp.where(improved, grad, s["grad_max"]),
                loss_max=jnp.where(improved, loss, s["loss_max"]),
            )
            # Checkpoint: halve η and go back to the best point when progress stalled.
            stalled = s["n_increase"] <= window[i] * cfg.rho
            no_gain = ~s["reduced_last"] & (s["loss_max_last"] >= s["loss_max"])
            halve = is_check[i] & (stalled | no_gain)
            return dict(
                s,
                eta=jnp.where(halve, s["eta"] / 2, s["eta"]),
                x=jnp.where(halve, s["x_max"], s["x"]),
                grad=jnp.where(halve, s["grad_max"], s["grad"]),
                reduced_last=jnp.where(is_check[i], halve, s["reduced_last"]),
                loss_max_last=jnp.where(is_check[i], s["loss_max"], s["loss_max_last"]),
                n_increase=jnp.where(is_check[i], 0, s["n_increase"]),
            )

        x = boundary_start(run_key, x0, cfg.eps, cfg.norm)
        loss, logits, grad = value_grad(x, 0)
        state = dict(
            x=x,
            x_prev=x,
            grad=grad,
            eta=jnp.asarray(2 * cfg.eps, jnp.float32),
            best=best.update(x, logits, loss, success_of(logits)),
            n_increase=jnp.int32(0),
            loss_prev=loss,
            x_max=x,
            grad_max=grad,
            loss_max=loss,
            loss_max_last=loss,
            reduced_last=jnp.bool_(True),
        )
        state = lax.fori_loop(0, cfg.steps, step, state)
        return state["best"], calls + (cfg.steps + 1) * cfg.draws


def plan(config: APGDConfig, randomized: bool = False) -> Plan:
    return Plan((Stage(APGDPhase, config),), randomized=randomized, min_classes=config.min_classes)


def apgd(model_fn, images, labels, key, config: APGDConfig, *, ids=None, eps=None, compact=True):
    """Run APGD (CE, DLR or targeted DLR) on a batch; untargeted success.

    Args: as :func:`diffjax.attacks.pgd.pgd` (no targets: APGD-T chooses them). With
    ``config.eot_iter > 1`` the model is randomised: ``model_fn(images [B, H, W, C], keys [B])``.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``model_calls`` = 1 + (steps + 1) per run
      (times ``eot_iter`` with EOT).
    """
    return run_plan(
        plan(config, randomized=config.eot_iter > 1), model_fn, images, labels, key, ids=ids,
        eps=eps, compact=compact,
    )  # fmt: skip
