"""Square attack, ℓ∞ and ℓ2 (Andriushchenko et al., ECCV 2020): gradient-free random search.

    result = square(model_fn, images, labels, key, SquareConfig(eps=4 / 255, queries=5000))
    result = square(model_fn, images, labels, key, SquareConfig(eps=0.5, norm="l2"))

ℓ∞: start from vertical stripes x + ε·s (one random sign per column and channel), clipped to the
box. Each query sets one random square window of side ⌈√(p·H·W)⌉ (rounded) to ±ε (one random
sign per channel), keeps the proposal if the margin loss z_y − max_{i≠y} z_i decreases or the
example is fooled, and stops for the example once it is fooled. p follows AutoAttack's schedule,
halving from ``p_init`` at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.

ℓ2: start from a grid of (up to 5 × 5) squares of side ⌊min(H, W)/5⌋, each holding the
"meta-pattern" (a positive bump over its top half, a negative one below, randomly transposed,
bump values Σ_{k≥r} 1/(k+1)² at Chebyshev distance r from the centre) with one random sign per
channel, scaled to ‖δ‖₂ = ε. Each query picks two windows W1, W2 of odd side ≈ √(p·H·W) (≥ 3),
moves W2's perturbation mass into W1 (W1 gets a centred bump with one random sign per channel
plus its old perturbation, normalised per channel and rescaled to take W1 ∪ W2's energy and the
unused budget), rescales the whole perturbation to ε and clips to the box. Acceptance and the p
schedule are those of ℓ∞. Because no gradient is used, Square succeeding where gradient attacks
fail points at gradient masking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffjax.attack_config import SquareConfig
from diffjax.attacks import interface as itf
from diffjax.attacks import losses
from diffjax.attacks.compaction import Example, Plan, Stage, run_plan

Array = jax.Array

P_SCHEDULE_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each
SQUARE_CHUNK = 500  # queries per segment: fooled examples leave the compacted batch after each


def square_fraction(i: Array, p_init: float) -> Array:
    """p at (0-based) query ``i``: p_init / 2^(number of schedule points below i)."""
    halvings = jnp.sum(i > jnp.asarray(P_SCHEDULE_STEPS))
    return p_init / 2.0**halvings


def ring_profile(n: int) -> np.ndarray:
    """T[r] = Σ_{k=1}^{r} 1/k² for r = 0 … n: the bump value at Chebyshev distance r from the
    centre of a pattern with M rings is T[M] − T[r] (each ring k adds 1/k² inside it)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]).astype(np.float32)


def rectangle_bump(a: int, b: int) -> np.ndarray:
    """The a×b centred bump (rings around (a//2, b//2), values decaying like Σ 1/k²), unit ℓ2."""
    rings = max(a // 2 + 1, b // 2 + 1)
    table = ring_profile(rings)
    i, j = np.arange(a)[:, None], np.arange(b)[None, :]
    r = np.maximum(np.abs(i - a // 2), np.abs(j - b // 2))
    bump = table[rings] - table[np.minimum(r, rings)]
    return bump / np.sqrt(np.sum(bump**2))


def meta_pattern(s: int) -> np.ndarray:
    """Square-ℓ2's s×s initial pattern: a positive bump over the top ⌊s/2⌋ rows and a negative
    one below, unit ℓ2 (Andriushchenko et al., Fig. 2)."""
    top = rectangle_bump(s // 2, s) if s // 2 else np.zeros((0, s), np.float32)
    pattern = np.concatenate([top, -rectangle_bump(s - s // 2, s)], axis=0)
    return (pattern / np.sqrt(np.sum(pattern**2))).astype(np.float32)


def _l2_init(key, x0, eps):
    """A grid of (up to 5 × 5) meta-pattern squares with one random sign per square and channel,
    each randomly transposed, scaled to ℓ2 norm ε, then clipped to the box."""
    h, w, c = x0.shape
    side = max(min(h, w) // 5, 1)
    n_h, n_w = min(5, h // side), min(5, w // side)
    top, left = (h - n_h * side) // 2, (w - n_w * side) // 2
    k_sign, k_flip = jax.random.split(key)
    signs = jax.random.rademacher(k_sign, (n_h, n_w, c), x0.dtype)
    flips = jax.random.bernoulli(k_flip, 0.5, (n_h, n_w))
    pattern = jnp.asarray(meta_pattern(side))
    tiles = jnp.where(flips[:, :, None, None], pattern.T, pattern)  # [n_h, n_w, side, side]
    tiles = tiles[..., None] * signs[:, :, None, None, :]  # [n_h, n_w, side, side, c]
    grid = tiles.transpose(0, 2, 1, 3, 4).reshape(n_h * side, n_w * side, c)
    delta = jnp.zeros_like(x0).at[top : top + n_h * side, left : left + n_w * side].set(grid)
    return jnp.clip(x0 + eps * delta / jnp.sqrt(jnp.sum(jnp.square(delta))), 0.0, 1.0)


def _l2_side(p: Array, h: int, w: int) -> Array:
    """Square-ℓ2's window side: round(√(p·h·w)), odd (so the bump has a centre pixel), at least
    3 and at most min(h, w)."""
    side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 3, None)
    side = jnp.where(side % 2 == 0, side + 1, side)
    largest = min(h, w) if min(h, w) % 2 else min(h, w) - 1
    return jnp.clip(side, 1, max(largest, 1))


def _l2_proposal(key, x, x0, eps, p):
    """Move the perturbation's mass from a random window W2 into a random window W1, where a
    centred bump with one random sign per channel is added to W1's normalised perturbation; the
    whole perturbation is then rescaled to ℓ2 norm ε and clipped to the box."""
    h, w, c = x0.shape
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    k1h, k1w, k2h, k2w, k_sign = jax.random.split(key, 5)
    side = _l2_side(p, h, w)
    top1, left1 = (jax.random.randint(k, (), 0, n - side + 1) for k, n in ((k1h, h), (k1w, w)))
    top2, left2 = (jax.random.randint(k, (), 0, n - side + 1) for k, n in ((k2h, h), (k2w, w)))
    in1 = (rows >= top1) & (rows < top1 + side) & (cols >= left1) & (cols < left1 + side)
    in2 = (rows >= top2) & (rows < top2 + side) & (cols >= left2) & (cols < left2 + side)
    rings = side // 2 + 1
    table = jnp.asarray(ring_profile(max(h, w)))
    r = jnp.maximum(jnp.abs(rows - (top1 + side // 2)), jnp.abs(cols - (left1 + side // 2)))
    bump = jnp.where(in1, table[rings] - table[jnp.minimum(r, rings)], 0.0)
    bump = bump / jnp.sqrt(jnp.sum(jnp.square(bump)))

    nu = x - x0
    in1c, in12c = in1[..., None], (in1 | in2)[..., None]
    norm_w1 = jnp.sqrt(jnp.sum(jnp.where(in1c, jnp.square(nu), 0.0), axis=(0, 1)))  # [c]
    norm_image = jnp.sqrt(jnp.sum(jnp.square(nu)))
    norm_windows = jnp.sqrt(jnp.sum(jnp.where(in12c, jnp.square(nu), 0.0)))
    signs = jax.random.rademacher(k_sign, (c,), x0.dtype)
    new = bump[..., None] * signs + jnp.where(in1c, nu / (norm_w1 + 1e-12), 0.0)
    new_norm = jnp.sqrt(jnp.sum(jnp.square(new), axis=(0, 1)))  # [c], new is 0 outside W1
    budget = jnp.sqrt(jnp.maximum(eps**2 - norm_image**2, 0.0) / c + norm_windows**2)
    new = new / (new_norm + 1e-12) * budget
    delta = jnp.where(in1c, new, jnp.where(in2[..., None], 0.0, nu))
    size = jnp.sqrt(jnp.sum(jnp.square(delta)))
    return jnp.clip(x0 + eps * delta / jnp.maximum(size, 1e-30), 0.0, 1.0)


def _linf_proposal(i, key, x, x0, eps, p_init):
    h, w, c = x0.shape
    rows = jnp.arange(h)[:, None, None]
    cols = jnp.arange(w)[None, :, None]
    k_pos_h, k_pos_w, k_sign, k_stripe = jax.random.split(jax.random.fold_in(key, i), 4)
    stripes = eps * jax.random.rademacher(k_stripe, (1, w, c), x0.dtype)
    p = square_fraction(i - 1, p_init)
    side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w))
    top = jax.random.randint(k_pos_h, (), 0, h - side + 1)
    left = jax.random.randint(k_pos_w, (), 0, w - side + 1)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    signs = eps * jax.random.rademacher(k_sign, (1, 1, c), x0.dtype)
    delta = jnp.where(i == 0, stripes, jnp.where(inside, signs, x - x0))
    return jnp.clip(x0 + delta, 0.0, 1.0)


def _margin_loss(logits, label):
    return -losses.margin(logits, label)  # z_y − max_{i≠y} z_i, to minimise


class SquarePhase:
    """Square as a stage: segments of ``SQUARE_CHUNK`` queries (the stripe / pattern start is
    query 0); carry (queries used, x, its logits, its loss, success)."""

    @staticmethod
    def segments(cfg: SquareConfig) -> int:
        return -(-(cfg.queries + 1) // SQUARE_CHUNK)

    @staticmethod
    def init(model, ex: Example, cfg: SquareConfig):
        success = itf.succeeded(ex.clean, ex.label, ex.label, False)
        return jnp.int32(0), ex.x0, ex.clean, _margin_loss(ex.clean, ex.label), success

    @staticmethod
    def done(ex: Example, cfg: SquareConfig, carry) -> Array:
        return carry[4]

    @staticmethod
    def output(ex: Example, cfg: SquareConfig, carry):
        calls, x, logits, _, _ = carry
        return x, logits, calls

    @staticmethod
    def segment(model, ex: Example, cfg: SquareConfig, carry, seg: Array):
        x0, label, key = ex.x0, ex.label, ex.key
        stop = jnp.minimum((seg + 1) * SQUARE_CHUNK, cfg.queries + 1)

        def proposal(i, x):
            if cfg.norm == "linf":
                return _linf_proposal(i, key, x, x0, cfg.eps, cfg.p_init)
            k = jax.random.fold_in(key, i)
            p = square_fraction(i - 1, cfg.p_init)
            return jnp.where(i == 0, _l2_init(k, x0, cfg.eps), _l2_proposal(k, x, x0, cfg.eps, p))

        def more(s):
            i, _, _, _, success = s
            return (i < stop) & ~success

        def query(s):
            i, x, logits, loss, _ = s
            x_new = proposal(i, x)
            logits_new = model(x_new)
            loss_new = _margin_loss(logits_new, label)
            success = itf.succeeded(logits_new, label, label, False)
            accept = (i == 0) | (loss_new < loss) | success  # the start always replaces x0
            x, logits, loss = jax.tree.map(
                lambda n, o: jnp.where(accept, n, o),
                (x_new, logits_new, loss_new),
                (x, logits, loss),
            )
            return i + 1, x, logits, loss, success

        return lax.while_loop(more, query, carry)


def plan(config: SquareConfig) -> Plan:
    return Plan((Stage(SquarePhase, config),))


def square(model_fn, images, labels, key, config: SquareConfig, *, ids=None, eps=None,
           compact=True):  # fmt: skip
    """Run Square (ℓ∞ or ℓ2) on a batch (untargeted); arguments as :func:`diffjax.attacks.pgd.pgd`.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`; ``model_calls`` = 1 + the queries used
      (the stripe start counts as one).
    """
    return run_plan(plan(config), model_fn, images, labels, key, ids=ids, eps=eps, compact=compact)
