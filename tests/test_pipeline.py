"""Input pipeline: deterministic shuffling, exact augmentation, masked evaluation, sharding."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import sharding
from diffjax.data import synthetic
from diffjax.data.pipeline import (
    augment,
    crop_flip,
    epoch_permutation,
    eval_batches,
    steps_per_epoch,
    to_unit_range,
    train_batches,
)


def test_epoch_permutations_are_seeded_and_differ_between_epochs():
    a = epoch_permutation(100, seed=3, epoch=2)
    np.testing.assert_array_equal(a, epoch_permutation(100, seed=3, epoch=2))
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    assert not np.array_equal(a, epoch_permutation(100, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_permutation(100, seed=4, epoch=2))


def test_train_batches_follow_the_epoch_permutation_and_resume_exactly():
    ds = synthetic(50, image_size=4, seed=0)
    batch = 8
    assert steps_per_epoch(50, batch) == 6  # 2 examples dropped per epoch
    stream = list(itertools.islice(train_batches(ds, batch, seed=7), 15))
    for step, (images, labels) in enumerate(stream):
        epoch, i = divmod(step, 6)
        idx = epoch_permutation(50, 7, epoch)[i * batch : (i + 1) * batch]
        np.testing.assert_array_equal(images, ds.images[idx])
        np.testing.assert_array_equal(labels, ds.labels[idx])
    # Starting at step 9 (mid-epoch 1) gives exactly the uninterrupted stream's batches.
    resumed = list(itertools.islice(train_batches(ds, batch, seed=7, start_step=9), 6))
    for (a, b), (c, d) in zip(resumed, stream[9:], strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    # Each epoch visits 48 distinct examples.
    seen = np.concatenate([labels for _, labels in stream[:6]])
    assert len(seen) == 48
    # This process's rows of each global batch.
    rows = list(itertools.islice(train_batches(ds, batch, seed=7, rows=slice(4, 8)), 2))
    np.testing.assert_array_equal(rows[1][0], stream[1][0][4:8])
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(train_batches(ds, 64, seed=0))


def test_eval_batches_count_every_example_exactly_once():
    ds = synthetic(23, image_size=4, seed=1)
    batches = list(eval_batches(ds, batch_size=8))
    assert [len(m) for _, _, m in batches] == [8, 8, 8]
    mask = np.concatenate([m for _, _, m in batches])
    assert mask.sum() == 23 and not mask[23:].any()
    np.testing.assert_array_equal(np.concatenate([x for x, _, _ in batches])[mask], ds.images)
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in batches])[mask], ds.labels)
    padding = batches[-1][0][~batches[-1][2]]
    assert padding.shape == (1, 4, 4, 3) and not padding.any()
    # A masked mean over the padded batches equals the plain mean over the dataset.
    score = lambda x: x.reshape(len(x), -1).mean(1)  # noqa: E731
    total = sum(float((score(x) * m).sum()) for x, _, m in batches)
    np.testing.assert_allclose(total / mask.sum(), score(ds.images.astype(np.float64)).mean())


def reference_crop_flip(images, offsets, flips, padding):
    """NumPy: zero-pad, slice, mirror."""
    out = []
    h, w = images.shape[1:3]
    for image, (dy, dx), flip in zip(images, offsets, flips, strict=True):
        padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        crop = padded[dy : dy + h, dx : dx + w]
        out.append(crop[:, ::-1] if flip else crop)
    return np.stack(out)


def test_crop_flip_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    offsets = np.array([[0, 0], [4, 4], [0, 4], [2, 1], [4, 0], [3, 3]])
    flips = np.array([False, True, False, True, True, False])
    got = crop_flip(jnp.asarray(images), jnp.asarray(offsets), jnp.asarray(flips), 2)
    np.testing.assert_array_equal(np.asarray(got), reference_crop_flip(images, offsets, flips, 2))
    assert got.dtype == jnp.uint8


def test_augment_draws_valid_crops_and_flips():
    images = jnp.asarray(np.arange(64 * 8 * 8 * 1, dtype=np.float32).reshape(64, 8, 8, 1) + 1)
    key = jax.random.key(0)
    out = np.asarray(jax.jit(augment, static_argnums=(2, 3))(key, images, 2, True))
    np.testing.assert_array_equal(out, np.asarray(augment(key, images, 2, True)))  # determinism
    # Recover each example's crop and flip by search: exactly one candidate must match.
    matches = []
    for image, got in zip(np.asarray(images), out, strict=True):
        hits = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (False, True)
            if np.array_equal(got, reference_crop_flip(image[None], [(dy, dx)], [f], 2)[0])
        ]
        assert len(hits) == 1
        matches.append(hits[0])
    assert {f for _, _, f in matches} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in matches}) > 5
    unchanged = augment(key, images, 0, False)
    np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(images))


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
def test_augment_does_not_depend_on_sharding():
    images = np.random.default_rng(0).integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    key = jax.random.key(5)
    run = jax.jit(augment, static_argnums=(2, 3))
    one = run(key, sharding.shard_batch(images, sharding.data_mesh(jax.devices()[:1])), 2, True)
    many = run(key, sharding.shard_batch(images, sharding.data_mesh()), 2, True)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(many))


def test_to_unit_range():
    x = jnp.asarray(np.array([0, 1, 128, 255], np.uint8))
    np.testing.assert_array_equal(
        np.asarray(to_unit_range(x)), np.array([0, 1, 128, 255], np.float32) / np.float32(255)
    )


def test_shard_batch_places_rows_on_the_data_axis():
    mesh = sharding.data_mesh()
    n = jax.device_count()
    x = np.arange(2 * n * 3).reshape(2 * n, 3)
    arr = sharding.shard_batch(x, mesh)
    np.testing.assert_array_equal(np.asarray(arr), x)
    assert arr.sharding.spec == sharding.batch_sharding(mesh).spec
    assert {s.data.shape for s in arr.addressable_shards} == {(2, 3)}
    if n > 1:
        with pytest.raises(ValueError, match="does not split"):
            sharding.shard_batch(x[:-1], mesh)
        with pytest.raises(ValueError, match="not divisible"):
            sharding.local_batch_size(2 * n + 1, mesh)
    assert sharding.process_rows(2 * n, mesh) == slice(0, 2 * n)
    sharding.initialize_distributed(False)  # a no-op without the flag
