"""A per-layer sensitivity summary: the numbers a ViT/DiffViT comparison reports for each layer.

rows = layer_summary(model, images, key=jax.random.key(0))
rows[l]["negative_alignment"], rows[l]["sigma_max_mean"]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffjax import sharding
from diffjax.analysis.alignment import alignment, negative_frequency, reduce_gram
from diffjax.analysis.functions import after, attention_layer, layer_input
from diffjax.analysis.jacobians import branch_grams
from diffjax.analysis.lipschitz import exact_local_lipschitz


def _step(model, images, keys, row, wrt, max_iters):
    out, token = [], images
    for layer in range(model.config.depth):
        z = after(token, layer_input(model, images, layer, wrt))
        a = alignment(reduce_gram(branch_grams(model, z, layer, wrt=wrt, row=row), "none"))
        u = after(a.cos, layer_input(model, images, layer, "attention_input"))
        lip = jax.vmap(
            lambda x, k, layer=layer: exact_local_lipschitz(
                lambda v: attention_layer(model, v, layer),
                x,
                method="lanczos",
                key=k,
                max_iters=max_iters,
            )  # fmt: skip
        )(u, jax.vmap(lambda k, layer=layer: jax.random.fold_in(k, layer))(keys))
        token = lip.value
        out.append({"cos": a.cos, "lam": a.lam, "sigma": lip.value, "bound": lip.bound})
    return out


_step_jit = jax.jit(_step, static_argnames=("row", "wrt", "max_iters"))


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
      u = LN1(h_l), by Lanczos) and ``sigma_bound_max`` (largest Lanczos residual bound).
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
    parts = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(padded))
        x, keys = jax.device_put((images[padded], keys), sharding.batch_sharding(mesh))
        out = jax.device_get(_step_jit(model, x, keys, row, wrt, max_iters))
        k = len(idx)
        parts.append(jax.tree.map(lambda t: t[:k] if t.ndim else t, out))  # noqa: B023
    rows = []
    for layer in range(model.config.depth):
        cos = np.concatenate([np.asarray(p[layer]["cos"]).reshape(len(p[layer]["sigma"]), -1)
                              for p in parts])  # fmt: skip
        sigma = np.concatenate([p[layer]["sigma"] for p in parts])
        bound = np.concatenate([p[layer]["bound"] for p in parts])
        lam = parts[0][layer]["lam"] if model.config.is_diff_layer(layer) else None
        rows.append({
            "layer": layer,
            "kind": "diff" if model.config.is_diff_layer(layer) else "softmax",
            "negative_alignment": float(negative_frequency(jnp.asarray(cos))),
            "cos_median": float(np.nanmedian(cos)),
            "lambda": None if lam is None else float(np.asarray(lam).reshape(-1)[0]),
            "sigma_max_mean": float(sigma.mean()),
            "sigma_max_max": float(sigma.max()),
            "sigma_bound_max": float(bound.max()),
            "examples": n,
        })  # fmt: skip
    return rows
