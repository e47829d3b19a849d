"""Several perturbation budgets in one call (foolbox's ``epsilons=[…]``).

    results = attack_epsilons(attacks.pgd, model_fn, images, labels, key, PGDConfig(0.0),
                              epsilons=[1 / 255, 2 / 255, 4 / 255])
    [r.success.mean() for r in results]   # one AttackResult per ε, in the order given

The batch is repeated once per ε and every copy of example e keeps its id, so its randomness is
``fold_in(key, ids[e])`` at every ε, exactly as in a separate call; the radius travels as a traced
per-example value (see :mod:`diffjax.attacks.compaction`), so all budgets share one compilation
(and, compacted, the examples fooled at a small ε leave the batch while larger ones go on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.attacks.interface import AttackResult


def attack_epsilons(
    attack_fn: Callable,
    model_fn,
    images,
    labels,
    key,
    config,
    epsilons: Sequence[float],
    *,
    targets=None,
    ids=None,
    compact: bool = True,
) -> list[AttackResult]:
    """Run ``attack_fn`` at every radius in ``epsilons`` in one call.

    Args:
      attack_fn: an ε-bounded attack (``pgd``, ``apgd``, ``fab_targeted``, ``square``,
        ``autoattack``); ``config.eps`` is ignored (replaced by each ε).
      model_fn, images [B, H, W, C], labels [B], key, config: as for the attack.
      epsilons: E ≥ 1 radii, finite and ≥ 0.
      targets: [B] target classes for targeted attacks.
      ids: [B] example identifiers (default ``arange(B)``), the same at every ε.
      compact: see :func:`diffjax.attacks.run_plan`.

    Returns:
      E :class:`AttackResult` s, the i-th equal to ``attack_fn(..., replace(config,
      eps=epsilons[i]))``.

    Raises:
      ValueError: no radii, a radius that is not finite or negative, or an attack without ε.
    """
    radii = np.asarray(list(epsilons), np.float64)
    if radii.ndim != 1 or radii.size == 0:
        raise ValueError(f"epsilons must be a non-empty list of radii, got {epsilons!r}")
    if not all(math.isfinite(r) and r >= 0 for r in radii):
        raise ValueError(f"epsilons must be finite and >= 0, got {list(radii)}")
    if not hasattr(config, "eps"):
        raise ValueError(f"{type(config).__name__} has no radius eps; it is not ε-bounded")
    images = jnp.asarray(images)
    b, e = images.shape[0], len(radii)
    ids = jnp.arange(b, dtype=jnp.int32) if ids is None else jnp.asarray(ids)

    def tile(a):
        return None if a is None else jnp.concatenate([jnp.asarray(a)] * e)

    kwargs = {"ids": tile(ids), "eps": jnp.repeat(jnp.asarray(radii, jnp.float32), b)}
    if targets is not None:
        kwargs["targets"] = tile(targets)
    if compact is not True:
        kwargs["compact"] = compact
    result = attack_fn(model_fn, tile(images), tile(labels), key, config, **kwargs)
    return [jax.tree.map(lambda a, i=i: a[i * b : (i + 1) * b], result) for i in range(e)]
