"""Carlini & Wagner's ℓ2 attack (IEEE S&P 2017), faithful to their reference implementation.

    result = cw_l2(model_fn, images, labels, key, CWConfig(binary_search_steps=9))
    result.l2          # smallest successful ℓ2 found per example (0 where it failed)

Per example and per binary-search step: the image is x'(w) = ½·tanh(w + atanh(0.999999·(2x − 1)))
+ ½ — the squeeze keeps pixels at exactly 0 or 1 movable — and w, starting at 0 with a fresh Adam
state, minimises ‖x' − x‖₂² + c·max(z_y − max_{i≠y} z_i + κ, 0) (targeted: max(max_{i≠t} z_i −
z_t + κ, 0)); the best other logit masks the label with −∞, so negative logits are handled. Every
iterate whose margin beats κ is a success; the smallest-ℓ2 success over all steps is kept. After
each step c is bisected (success: upper = c; failure: lower = c) or multiplied by 10 while no
upper bound is known; with ≥ 10 steps the last one reruns at the upper bound. Early abort is per
example: every max_iterations/10 iterations, stop when the objective exceeds 0.9999× its value
at the previous check. Examples that never succeed come back as the clean image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from diffjax.attack_config import CWConfig
from diffjax.attacks import interface as itf
from diffjax.attacks import losses

Array = jax.Array

TANH_SQUEEZE = 0.999999  # Carlini's factor keeping atanh finite at pixels 0 and 1
UPPER_INIT = 1e10  # "no upper bound on c yet"
UPPER_KNOWN = 1e9  # Carlini's threshold for bisecting instead of multiplying by 10
ABORT_FACTOR = 0.9999


def _cw_single(model, x0, label, target, key, cfg: CWConfig):
    del key  # deterministic
    cls = target if cfg.targeted else label
    kappa = cfg.confidence
    w0 = jnp.arctanh((2.0 * x0 - 1.0) * TANH_SQUEEZE)
    optimizer = optax.adam(cfg.learning_rate)
    check_every = max(cfg.max_iterations // 10, 1)

    def image(w):
        return 0.5 * jnp.tanh(w + w0) + 0.5

    def beats_kappa(logits):
        m = losses.margin(logits, cls)
        return (-m if cfg.targeted else m) > kappa

    def weighted_hinge(logits, cls, c):
        return c * losses.cw_hinge(logits, cls, kappa, cfg.targeted)

    def value_grad(w, c):
        """The objective ‖x' − x‖² + c·f(x') at x' = image(w), its gradient in w, x', logits."""
        x, pullback = jax.vjp(image, w)
        hinge, logits, grad_x = model.value_and_grad(weighted_hinge, x, cls, c)
        dist = jnp.sum(jnp.square(x - x0))
        (grad_w,) = pullback(grad_x + 2.0 * (x - x0))
        return dist + hinge, grad_w, x, logits, dist

    clean = model(x0)
    clean_ok = beats_kappa(clean)
    # Overall best: the clean image counts as a (distance 0) success if it already beats κ.
    best = (x0, clean, jnp.where(clean_ok, 0.0, jnp.inf).astype(jnp.float32))

    def binary_step(s, carry):
        c, lower, upper, best, calls = carry
        if cfg.binary_search_steps >= 10:
            c = jnp.where(s == cfg.binary_search_steps - 1, upper, c)
        w = jnp.zeros_like(x0)

        def more(state):
            i, _, _, _, aborted, _, _ = state
            return ~clean_ok & (i < cfg.max_iterations) & ~aborted

        def iterate(state):
            i, w, opt_state, prev, aborted, found, best = state
            loss, grad, x, logits, dist = value_grad(w, c)
            ok = beats_kappa(logits)
            found = found | ok
            better = ok & (dist < best[2])
            best = jax.tree.map(lambda n, o: jnp.where(better, n, o), (x, logits, dist), best)
            updates, opt_state = optimizer.update(grad, opt_state, w)
            w = optax.apply_updates(w, updates)
            check = cfg.abort_early & (i % check_every == 0)
            aborted = check & (loss > prev * ABORT_FACTOR)
            prev = jnp.where(check, loss, prev)
            return i + 1, w, opt_state, prev, aborted, found, best

        init = (0, w, optimizer.init(w), jnp.float32(jnp.inf), False, False, best)
        i, _, _, _, _, found, best = lax.while_loop(more, iterate, init)
        upper = jnp.where(found, jnp.minimum(upper, c), upper)
        lower = jnp.where(found, lower, jnp.maximum(lower, c))
        bisect = (lower + upper) / 2
        c = jnp.where(upper < UPPER_KNOWN, bisect, jnp.where(found, c, c * 10))
        return c, lower, upper, best, calls + i

    f32 = jnp.float32
    init = (f32(cfg.initial_const), f32(0.0), f32(UPPER_INIT), best, jnp.int32(0))
    _, _, upper, (adv, logits, _), calls = lax.fori_loop(
        0, cfg.binary_search_steps, binary_step, init
    )
    return adv, logits, clean, calls + 1, {"const": upper}


def cw_l2(
    model_fn,
    images,
    labels,
    key,
    config: CWConfig = CWConfig(),  # noqa: B008 (a frozen dataclass)
    *,
    targets=None,
    ids=None,
):
    """Run CW-L2 on a batch; see :func:`diffjax.attacks.pgd.pgd` for the arguments.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult` whose ``l2`` is the smallest successful
      distance found (the clean image, distance 0, where the attack failed; ``success`` tells
      which); ``extras["const"]`` is the smallest c that succeeded (1e10 if none).
    """
    return itf.run_attack(
        _cw_single, model_fn, images, labels, key, config, targets=targets, ids=ids
    )
