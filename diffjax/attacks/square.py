"""Square attack, ℓ∞ (Andriushchenko et al., ECCV 2020): gradient-free random search.

    result = square(model_fn, images, labels, key, SquareConfig(eps=4 / 255, queries=5000))

Start from vertical stripes x + ε·s (one random sign per column and channel), clipped to the box.
Each query sets one random square window of side ⌈√(p·H·W)⌉ (rounded) to ±ε (one random sign per
channel), keeps the proposal if the margin loss z_y − max_{i≠y} z_i decreases or the example is
fooled, and stops for the example once it is fooled. p follows AutoAttack's schedule, halving
from ``p_init`` at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. Because no gradient
is used, Square succeeding where gradient attacks fail points at gradient masking.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from diffjax.attacks import interface as itf
from diffjax.attacks import losses

Array = jax.Array

P_SCHEDULE_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each


@dataclasses.dataclass(frozen=True)
class SquareConfig:
    """Square-ℓ∞ settings (defaults: AutoAttack's).

    Attributes:
      eps: ℓ∞ radius, pixel units on the [0, 1] scale.
      queries: iterations after the stripe initialisation (each one model evaluation).
      p_init: initial fraction of pixels in the square.
    """

    eps: float
    queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self):
        itf.check_eps(self.eps)
        itf.check_int("queries", self.queries, 0)
        itf.check_fraction("p_init", self.p_init)


def square_fraction(i: Array, p_init: float) -> Array:
    """p at (0-based) query ``i``: p_init / 2^(number of schedule points below i)."""
    halvings = jnp.sum(i > jnp.asarray(P_SCHEDULE_STEPS))
    return p_init / 2.0**halvings


def square_core(model, x0, label, target, key, cfg: SquareConfig, clean: Array, active: Array):
    """Square on one example. Returns (adv, adv logits [K], model calls, extras)."""
    del target
    h, w, c = x0.shape
    rows = jnp.arange(h)[:, None, None]
    cols = jnp.arange(w)[None, :, None]

    def loss_of(logits):
        return -losses.margin(logits, label)  # z_y − max_{i≠y} z_i, to minimise

    def proposal(i, x):
        k_pos_h, k_pos_w, k_sign, k_stripe = jax.random.split(jax.random.fold_in(key, i), 4)
        stripes = cfg.eps * jax.random.rademacher(k_stripe, (1, w, c), x0.dtype)
        p = square_fraction(i - 1, cfg.p_init)
        side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w))
        top = jax.random.randint(k_pos_h, (), 0, h - side + 1)
        left = jax.random.randint(k_pos_w, (), 0, w - side + 1)
        inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        signs = cfg.eps * jax.random.rademacher(k_sign, (1, 1, c), x0.dtype)
        delta = jnp.where(i == 0, stripes, jnp.where(inside, signs, x - x0))
        return jnp.clip(x0 + delta, 0.0, 1.0)

    def more(s):
        i, _, _, _, success = s
        return active & (i <= cfg.queries) & ~success

    def query(s):
        i, x, logits, loss, _ = s
        x_new = proposal(i, x)
        logits_new = model(x_new)
        loss_new = loss_of(logits_new)
        success = itf.succeeded(logits_new, label, label, False)
        accept = (i == 0) | (loss_new < loss) | success  # the stripes always replace the clean x
        x, logits, loss = jax.tree.map(
            lambda n, o: jnp.where(accept, n, o), (x_new, logits_new, loss_new), (x, logits, loss)
        )
        return i + 1, x, logits, loss, success

    clean_success = itf.succeeded(clean, label, label, False)
    init = (jnp.int32(0), x0, clean, loss_of(clean), clean_success)
    calls, x, logits, _, _ = lax.while_loop(more, query, init)
    return x, logits, calls, {}


def _square_single(model, x0, label, target, key, cfg):
    clean = model(x0)
    adv, logits, calls, extras = square_core(model, x0, label, target, key, cfg, clean, True)
    return adv, logits, clean, calls + 1, extras


def square(model_fn, images, labels, key, config: SquareConfig, *, ids=None):
    """Run Square-ℓ∞ on a batch (untargeted); arguments as :func:`diffjax.attacks.pgd.pgd`.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``model_calls`` = 1 + the queries used
      (the stripe start counts as one).
    """
    return itf.run_attack(_square_single, model_fn, images, labels, key, config, ids=ids)
