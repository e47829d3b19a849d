"""Attack objectives on logits, all to be MAXIMISED, over the last axis.

Every function takes ``logits`` [..., K] and integer ``labels`` [...] and returns [...]; the
batched form ``loss_fn(logits [B, K], labels [B]) -> [B]`` is also the signature of a
user-supplied objective.

The "best other class" max_{i≠y} z_i masks the label with −∞, never by multiplying with a
one-hot: a zeroed-out label logit would win whenever all logits are negative.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffjax.attack_config import PGD_LOSSES

Array = jax.Array
LossFn = Callable[[Array, Array], Array]

DLR_EPS = 1e-12  # Croce & Hein's guard against a zero denominator


def other_max(logits: Array, labels: Array) -> Array:
    """max_{i ≠ y} z_i. [...]."""
    mask = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    return jnp.max(jnp.where(mask, -jnp.inf, logits), axis=-1)


def label_logit(logits: Array, labels: Array) -> Array:
    """z_y. [...]."""
    return jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy(logits: Array, labels: Array) -> Array:
    """−log softmax(z)_y (nats). [...]."""
    return jax.nn.logsumexp(logits, axis=-1) - label_logit(logits, labels)


def margin(logits: Array, labels: Array) -> Array:
    """max_{i≠y} z_i − z_y: positive iff some other class beats y. [...]."""
    return other_max(logits, labels) - label_logit(logits, labels)


def dlr(logits: Array, labels: Array) -> Array:
    """Croce & Hein's difference of logits ratio, −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3 + 1e−12),
    π the classes in descending logit order. Needs K ≥ 3. [...]."""
    z = jnp.sort(logits, axis=-1)
    return margin(logits, labels) / (z[..., -1] - z[..., -3] + DLR_EPS)


def dlr_targeted(logits: Array, labels: Array, targets: Array) -> Array:
    """Targeted DLR, −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 1e−12). Needs K ≥ 4. [...]."""
    z = jnp.sort(logits, axis=-1)
    scale = z[..., -1] - 0.5 * (z[..., -3] + z[..., -4]) + DLR_EPS
    return (label_logit(logits, targets) - label_logit(logits, labels)) / scale


def cw_hinge(logits: Array, labels: Array, kappa: float, targeted: bool) -> Array:
    """Carlini & Wagner's f (to MINIMISE): max(z_y − max_{i≠y} z_i + κ, 0) untargeted, or
    max(max_{i≠t} z_i − z_t + κ, 0) with ``labels`` = targets t. [...]."""
    m = margin(logits, labels)
    return jnp.maximum((m if targeted else -m) + kappa, 0.0)


LOSSES: dict[str, LossFn] = dict(zip(PGD_LOSSES, (cross_entropy, margin), strict=True))


def objective(loss: str | LossFn, targeted: bool) -> LossFn:
    """The function PGD maximises: a named loss ("ce" or "margin"), negated and evaluated at the
    target for targeted attacks; a callable is used as given (with the targets as its labels when
    targeted)."""
    if callable(loss):
        return loss
    base = LOSSES[loss]
    if not targeted:
        return base
    return lambda logits, targets: -base(logits, targets)
