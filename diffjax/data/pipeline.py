"""Input pipeline: seeded per-epoch shuffling, on-device augmentation, masked evaluation batches.

    for images, labels in train_batches(ds, batch_size=128, seed=0, start_step=step): ...
    x = augment(key, images, padding=4, flip=True)   # inside the jitted step, uint8 → [0, 1]
    for images, labels, mask in eval_batches(ds, batch_size=500): ...

Training order depends only on (seed, epoch), never on where a run stopped, so a resumed run sees
exactly the batches an uninterrupted one would. Evaluation pads the last batch and marks the
padding with ``mask = False``, so a masked sum counts every example exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.dataset import Dataset


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order [n] int64 in which epoch ``epoch`` visits the ``n`` training examples."""
    return np.random.default_rng((seed, epoch)).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder of each permutation is dropped)."""
    if n < batch_size:
        raise ValueError(f"{n} training examples are fewer than one batch of {batch_size}")
    return n // batch_size


def train_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rows: slice = slice(None),
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Training batches for global steps ``start_step, start_step + 1, ...`` (endless).

    Step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``'s permutation.

    Args:
      dataset: the training split.
      batch_size: the global batch size B.
      seed: the shuffling seed.
      start_step: the first global step to produce (resume point).
      rows: which rows of each global batch to yield (this process's share).

    Yields:
      (images [b, H, W, C] uint8, labels [b] int32), b = the rows' length.
    """
    spe = steps_per_epoch(len(dataset), batch_size)
    step, perm, perm_epoch = start_step, None, None
    while True:
        epoch, i = divmod(step, spe)
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(len(dataset), seed, epoch), epoch
        idx = perm[i * batch_size : (i + 1) * batch_size][rows]
        yield dataset.images[idx], dataset.labels[idx]
        step += 1


def eval_batches(
    dataset: Dataset, batch_size: int, rows: slice = slice(None)
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every example once, in order; the last batch is padded with zero images.

    Yields:
      (images [b, H, W, C] uint8, labels [b] int32, mask [b] bool), False on padding rows.
    """
    n = len(dataset)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        images, labels = dataset.images[start:stop], dataset.labels[start:stop]
        mask = np.arange(batch_size) < stop - start
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        yield images[rows], labels[rows], mask[rows]


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int) -> jax.Array:
    """Zero-pad by ``padding``, crop back to size at ``offsets``, mirror where ``flips``.

    Args:
      images: [B, H, W, C].
      offsets: [B, 2] int, top-left (row, column) of each crop in the padded image, each in
        [0, 2 * padding].
      flips: [B] bool, mirror left-right after cropping.
      padding: pixels of zero padding on every side.

    Returns:
      [B, H, W, C], same dtype.
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image, offset, flip):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


def augment(key: jax.Array, images: jax.Array, padding: int, flip: bool) -> jax.Array:
    """Random crop with zero padding and random horizontal flip, per example.

    Args:
      key: PRNG key; the draw does not depend on how the batch is sharded.
      images: [B, H, W, C].
      padding: crop padding in pixels (0 = no crop).
      flip: flip each image left-right with probability 1/2.

    Returns:
      [B, H, W, C], same dtype.
    """
    k_crop, k_flip = jax.random.split(key)
    b = images.shape[0]
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (b,)) if flip else jnp.zeros((b,), bool)
    return crop_flip(images, offsets, flips, padding)
