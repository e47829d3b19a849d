"""Attacking a whole dataset in batches, with every returned example re-checked independently.

    records = attack_dataset(attacks.pgd, model_fn, images, labels, key, PGDConfig(4 / 255))
    summary = attacks.summarize(records["label"], records["clean_pred"], records["adv_pred"], ...)

The attack's own success flags and norms are not trusted: each adversarial batch is re-evaluated
by the model in a separate computation, its ℓ∞/ℓ2 distance to the clean image re-measured in
float64 NumPy, and its [0, 1] box and ε-ball checked. A disagreement raises
:class:`AttackCheckError` instead of reporting a wrong number.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax.attacks.accounting import Summary, summarize
from diffjax.attacks.interface import as_partial

Array = jax.Array

# float32 images: a projected example may sit one rounding step outside the ε-ball.
NORM_SLACK = 1e-5


class AttackCheckError(RuntimeError):
    """An attack returned an example that fails the independent re-check."""


def recheck(model_fn, images, adv_images, labels, success, eps=None, norm=None, targets=None):
    """Independently re-evaluate one batch of adversarial examples.

    Args:
      model_fn: images [B, H, W, C] in [0, 1] → logits [B, K].
      images, adv_images: [B, H, W, C] clean and adversarial images.
      labels: [B] true classes; targets: [B] target classes for targeted attacks.
      success: [B] the attack's success flags.
      eps, norm: the threat model to check (``eps=None``: norms are only measured; ``norm=None``
        means ℓ∞, the only norm of the attacks whose config has none, e.g. Square).

    Returns:
      ``{"adv_pred", "linf", "l2", "valid"}`` numpy arrays [B], recomputed here; ``valid`` is
      False where the re-evaluated logits are not finite (such an example is not fooled).

    Raises:
      AttackCheckError: an example leaves [0, 1] or the ε-ball, or its success flag disagrees
        with the model's re-evaluated prediction.
    """
    adv = np.asarray(adv_images, np.float64)
    delta = (adv - np.asarray(images, np.float64)).reshape(len(adv), -1)
    linf, l2 = np.abs(delta).max(axis=1), np.sqrt((delta**2).sum(axis=1))
    if adv.min() < 0 or adv.max() > 1 or not np.all(np.isfinite(adv)):
        raise AttackCheckError(f"adversarial images leave [0, 1]: [{adv.min()}, {adv.max()}]")
    if eps is not None:
        norm = norm or "linf"
        dist = {"linf": linf, "l2": l2}[norm]
        if np.any(dist > eps + NORM_SLACK):
            raise AttackCheckError(f"{norm} distance {dist.max()} exceeds eps {eps}")
    logits = np.asarray(jax.jit(model_fn)(jax.numpy.asarray(adv_images)))
    pred, valid = logits.argmax(axis=1), np.isfinite(logits).all(axis=1)
    fooled = pred == np.asarray(targets) if targets is not None else pred != np.asarray(labels)
    fooled &= valid  # argmax of NaN logits is class 0: no prediction at all
    if np.any(fooled != np.asarray(success)):
        bad = np.flatnonzero(fooled != np.asarray(success))
        raise AttackCheckError(f"success flags disagree with the re-evaluated model at {bad}")
    return {"adv_pred": pred, "linf": linf, "l2": l2, "valid": valid}


def attack_dataset(
    attack_fn: Callable,
    model_fn,
    images: np.ndarray,
    labels: np.ndarray,
    key: Array,
    config,
    *,
    batch_size: int = 100,
    targets: np.ndarray | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``attack_fn`` over a dataset in fixed-size batches sharded over all devices.

    Args:
      attack_fn: one of the attacks (``pgd``, ``apgd``, ``cw_l2``, …).
      model_fn: images → logits.
      images: [N, H, W, C] uint8 (divided by 255 here) or float in [0, 1].
      labels: [N] int; targets: [N] for targeted attacks.
      key: PRNG key; example i uses ``fold_in(key, i)``, so results do not depend on batching
        (nor on the compaction inside each batch: the attacks run their restarts, targets and
        stages on the still-robust examples only, see :mod:`diffjax.attacks.compaction`).
      config: the attack's config (its ``eps``/``norm``, if any, are re-checked).
      batch_size: a multiple of the device count; the last batch is padded (one compile).
      on_batch: called with (batches done, total batches) for progress bars.

    Returns:
      Per-example arrays [N]: ``index``, ``label``, ``clean_pred``, ``adv_pred`` (re-evaluated),
      ``valid`` (re-evaluated logits finite), ``success``, ``linf``, ``l2`` (re-measured),
      ``model_calls``, and the attack's extras.

    Raises:
      ValueError: bad inputs, or NaN / infinite clean logits (from the attack).
      AttackCheckError: a returned example fails the re-check (:func:`recheck`).
    """
    n = len(images)
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match {n} images")
    devices = jax.devices()
    if batch_size <= 0 or batch_size % len(devices):
        raise ValueError(f"batch_size must be a positive multiple of {len(devices)} devices")
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    # a plain function becomes a leafless Partial, as the attacks themselves accept it; the
    # re-check runs apart from the attack, on this process's own copy of the model.
    local_model_fn = as_partial(model_fn)
    model_fn = jax.device_put(local_model_fn, NamedSharding(mesh, P()))
    eps, norm = getattr(config, "eps", None), getattr(config, "norm", None)
    out: dict[str, list] = {}
    batches = -(-n // batch_size)
    for b in range(batches):
        index = np.arange(b * batch_size, min((b + 1) * batch_size, n))
        padded = np.concatenate([index, np.full(batch_size - len(index), index[-1])])
        x = images[padded]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        y = np.asarray(labels)[padded].astype(np.int32)
        kwargs = {"ids": jax.device_put(padded.astype(np.int32), rows)}
        t = None
        if targets is not None:
            t = np.asarray(targets)[padded].astype(np.int32)
            kwargs["targets"] = jax.device_put(t, rows)
        result = attack_fn(
            model_fn, jax.device_put(x, rows), jax.device_put(y, rows), key, config, **kwargs
        )
        # Every process gets the whole batch (a plain device_get in one process).
        result = multihost_utils.process_allgather(result, tiled=True)
        checked = recheck(local_model_fn, x, result.adv_images, y, result.success, eps, norm, t)
        k = len(index)
        fields = {
            "index": index,
            "label": y[:k],
            "clean_pred": np.asarray(result.clean_logits).argmax(axis=1)[:k],
            "adv_pred": checked["adv_pred"][:k],
            "valid": checked["valid"][:k],
            "success": np.asarray(result.success)[:k],
            "linf": checked["linf"][:k],
            "l2": checked["l2"][:k],
            "model_calls": np.asarray(result.model_calls)[:k],
            **{name: np.asarray(v)[:k] for name, v in result.extras.items()},
        }
        if t is not None:
            fields["target"] = t[:k]
        for name, v in fields.items():
            out.setdefault(name, []).append(v)
        if on_batch is not None:
            on_batch(b + 1, batches)
    return {name: np.concatenate(v) for name, v in out.items()}


def summarize_records(records: dict[str, np.ndarray]) -> Summary:
    """:func:`diffjax.attacks.summarize` of :func:`attack_dataset`'s records."""
    return summarize(
        records["label"],
        records["clean_pred"],
        records["adv_pred"],
        records["linf"],
        records["l2"],
        records["model_calls"],
        records.get("target"),
        records.get("valid"),
    )
