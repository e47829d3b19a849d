"""Per-layer sensitivity summaries: the numbers a ViT/DiffViT comparison reports for each layer.

rows = layer_summary(model, images, key=jax.random.key(0))
rows[l]["negative_alignment"], rows[l]["sigma_max_mean"]
rows = layer_lipschitz(model, images, key=jax.random.key(0))   # exact vs sampled vs PGD
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffjax import sharding
from diffjax.analysis.alignment import alignment, negative_frequency, reduce_gram
from diffjax.analysis.functions import attention_layer, layer_input
from diffjax.analysis.jacobians import branch_grams
from diffjax.analysis.lipschitz import exact_local_lipschitz, pgd_lipschitz, sampled_lipschitz


@functools.partial(jax.jit, static_argnames=("layer", "row", "wrt"))
def _alignment(model, images, keys, layer, row, wrt):
    z = layer_input(model, images, layer, wrt)
    a = alignment(reduce_gram(branch_grams(model, z, layer, wrt=wrt, row=row), "none"))
    return {"cos": a.cos, "rho": a.rho, "lam": a.lam}


@functools.partial(jax.jit, static_argnames=("layer", "max_iters"))
def _exact(model, images, keys, layer, max_iters):
    u = layer_input(model, images, layer, "attention_input")
    lip = jax.vmap(
        lambda x, k: exact_local_lipschitz(
            lambda v: attention_layer(model, v, layer),
            x,
            method="lanczos",
            key=jax.random.fold_in(k, layer),
            max_iters=max_iters,
        )
    )(u, keys)
    return {"sigma": lip.value, "bound": lip.bound}


@functools.partial(jax.jit, static_argnames=("layer", "radius", "samples", "pgd_steps"))
def _empirical(model, images, keys, layer, radius, samples, pgd_steps):
    u = layer_input(model, images, layer, "attention_input")

    def one(x, k):
        f = lambda v: attention_layer(model, v, layer)  # noqa: E731
        k1, k2 = jax.random.split(jax.random.fold_in(k, layer))
        sampled = sampled_lipschitz(f, x, radius=radius, num_samples=samples, key=k1)
        pgd, _ = pgd_lipschitz(f, x, radius=radius, steps=pgd_steps, key=k2)
        return {"sampled": sampled.value, "pgd": pgd.value}

    return jax.vmap(one)(u, keys)


def _per_layer(model, images, key, batch_size, parts) -> list[dict]:
    """Run ``parts`` (each ``fn(model, images, keys, layer) -> {name: [B, ...]}``) per layer.

    One jitted computation per layer and part, each finished before the next starts, so their
    loops never compete for XLA:CPU's thread pool (README, "Known issue"). Returns per layer the
    concatenated NumPy arrays over all images.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    n = len(images)
    # The model is replicated and each batch split over all devices; every collective then
    # runs on every device (a model left replicated by training, fed inputs on one device,
    # can otherwise stall the sharded while-loops of Lanczos).
    mesh = sharding.data_mesh()
    nnx.update(model, jax.device_put(nnx.state(model), sharding.replicated(mesh)))
    devices = mesh.devices.size
    batch_size = -(-min(batch_size, n) // devices) * devices
    out = [dict() for _ in range(model.config.depth)]
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(padded))
        x, keys = jax.device_put((images[padded], keys), sharding.batch_sharding(mesh))
        for layer in range(model.config.depth):
            for fn in parts:
                for name, v in jax.device_get(fn(model, x, keys, layer)).items():
                    v = np.asarray(v)
                    out[layer].setdefault(name, []).append(v[: len(idx)] if v.ndim else v)
    return [{k: np.concatenate(v) if v[0].ndim else v[0] for k, v in d.items()} for d in out]


def _check_finite(per_layer: list[dict], names: tuple[str, ...]) -> None:
    """Refuse to report NaN or infinite values (e.g. of a model with NaN weights)."""
    for layer, d in enumerate(per_layer):
        for name in names:
            bad = np.flatnonzero(~np.isfinite(d[name]))
            if bad.size:
                raise FloatingPointError(
                    f"layer {layer}: {name} is NaN or infinite for examples {bad.tolist()[:10]} "
                    f"({bad.size} of {len(d[name])}); is the model's state finite?"
                )


def layer_summary(
    model,
    images,
    *,
    key: jax.Array,
    row: int | None = 0,
    wrt: str = "image",
    batch_size: int = 8,
    max_iters: int = 60,
) -> list[dict]:
    """Per layer: branch alignment and the exact local Lipschitz constant of the attention layer.

    Args:
      model: a ViT / DiffViT (or any model with its interface, e.g. a CLIP zero-shot classifier).
      images: [B, H, W, C] float in [0, 1] (or uint8, divided by 255).
      key: PRNG key; example i uses ``fold_in(key, i)`` for its Lanczos start vectors.
      row: query row whose maps are differentiated (0 = CLS; ``None``: all rows).
      wrt: differentiate the maps with respect to ``"image"``, ``"block_input"`` or
        ``"attention_input"``.
      batch_size: examples per jitted call.
      max_iters: Lanczos iterations (the reported ``sigma_bound`` says how accurate it got).

    The model's arrays are placed, in place, replicated over all devices.

    Returns:
      One dict per layer: ``kind`` ("diff"/"softmax"), ``negative_alignment`` (fraction of
      (example, head) pairs with cos θ < 0 — softmax heads paired (2h, 2h+1)), ``cos_median``,
      ``lambda`` (DA), ``sigma_max_mean`` / ``sigma_max_max`` (σmax of ∂attn/∂u over examples,
      u = LN1(h_l), by Lanczos), ``sigma_bound_max`` (largest Lanczos residual bound), and the
      per-example values ``cos`` and ``rho`` ([B][heads]) and ``sigma`` ([B]).

    Raises:
      FloatingPointError: σmax or its bound is not finite for some example.
    """
    parts = [
        functools.partial(_alignment, row=row, wrt=wrt),
        functools.partial(_exact, max_iters=max_iters),
    ]
    per_layer = _per_layer(model, images, key, batch_size, parts)
    _check_finite(per_layer, ("sigma", "bound"))
    rows = []
    for layer, d in enumerate(per_layer):
        cos = d["cos"].reshape(len(d["sigma"]), -1)
        diff = model.config.is_diff_layer(layer)
        rows.append({
            "layer": layer,
            "kind": "diff" if diff else "softmax",
            "negative_alignment": float(negative_frequency(jnp.asarray(cos))),
            "cos_median": float(np.nanmedian(cos)),
            "lambda": float(np.asarray(d["lam"]).reshape(-1)[0]) if diff else None,
            "sigma_max_mean": float(d["sigma"].mean()),
            "sigma_max_max": float(d["sigma"].max()),
            "sigma_bound_max": float(d["bound"].max()),
            "examples": len(cos),
            "cos": cos.tolist(),
            "rho": d["rho"].reshape(len(cos), -1).tolist(),
            "sigma": d["sigma"].tolist(),
        })  # fmt: skip
    return rows


def layer_lipschitz(
    model,
    images,
    *,
    key: jax.Array,
    radius: float = 1e-3,
    samples: int = 64,
    pgd_steps: int = 20,
    batch_size: int = 8,
    max_iters: int = 60,
) -> list[dict]:
    """Per layer and example: the attention layer's local Lipschitz constant, three ways.

    ``exact`` is σmax(∂attn/∂u) at u = LN1(h_l) by Lanczos (``bound``: its residual bound);
    ``sampled`` the paper-style max of ‖attn(u+ξ) − attn(u)‖/‖ξ‖ over ``samples`` random ξ in
    the ℓ2 ball of radius ``radius``; ``pgd`` that ratio maximised by ``pgd_steps`` ascent steps
    on the sphere ‖ξ‖ = radius. Both empirical values are lower bounds of the local constant
    (to first order in ``radius``); see :mod:`diffjax.analysis.lipschitz`.

    Args:
      model, images, key, batch_size, max_iters: as :func:`layer_summary`.
      radius: ‖ξ‖ in units of u.

    Returns:
      One dict per layer: ``layer``, ``kind``, and per-example lists ``exact``, ``bound``,
      ``sampled``, ``pgd``.

    Raises:
      FloatingPointError: one of the four values is not finite for some example.
    """
    parts = [
        functools.partial(_exact, max_iters=max_iters),
        functools.partial(_empirical, radius=radius, samples=samples, pgd_steps=pgd_steps),
    ]
    per_layer = _per_layer(model, images, key, batch_size, parts)
    _check_finite(per_layer, ("sigma", "bound", "sampled", "pgd"))
    return [
        {
            "layer": layer,
            "kind": "diff" if model.config.is_diff_layer(layer) else "softmax",
            "exact": d["sigma"].tolist(),
            "bound": d["bound"].tolist(),
            "sampled": d["sampled"].tolist(),
            "pgd": d["pgd"].tolist(),
        }
        for layer, d in enumerate(per_layer)
    ]
