"""Compaction: running each stage, target, restart or query chunk on the still-robust examples
only gives exactly the per-example results of the uncompacted vmapped run."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import diffjax as dj
from diffjax import attacks
from diffjax import data as djdata
from diffjax.attacks import compaction
from tests.test_attacks_oracle import EPS, linear, make_batch


def assert_identical(a, b):
    names = [str(p) for p, _ in jax.tree_util.tree_flatten_with_path(a)[0]]
    for name, u, v in zip(names, jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)


def stage_batch():
    """32 linear-oracle examples: 8 at ε/3 and 8 at ε/1.3 (easy), 8 at ε/1.05, 8 at ε/0.95 (the
    last 8 cannot be fooled)."""
    xa, ya, _ = make_batch("linf", near=3.0, far=1.3, seed=1)
    xb, yb, _ = make_batch("linf", near=1.05, far=0.95, seed=2)
    return np.concatenate([xa, xb]), np.concatenate([ya, yb])


# Batches of different sizes give bit-identical rows with the code LLVM generates at XLA's default
# level, not at the suite's -O0 (1-ulp differences in a few adversarial pixels).
@pytest.mark.default_compiler
def test_compacted_autoattack_is_identical_and_every_stage_matters():
    x, y = stage_batch()
    # A weak Square first, then one-step APGDs, then FAB-T: each stage fools examples the earlier
    # ones left, so compaction changes the batch between every stage and target.
    config = attacks.AutoAttackConfig(
        EPS["linf"],
        stages=("square", "fab-t", "apgd-ce", "apgd-t"),
        steps=1,
        num_targets=4,
        square_queries=100,
    )
    ids = np.arange(500, 532)
    compact = attacks.autoattack(linear, x, y, jax.random.key(3), config, ids=ids)
    plain = attacks.autoattack(linear, x, y, jax.random.key(3), config, ids=ids, compact=False)
    assert_identical(compact, plain)
    stage = np.asarray(compact.extras["stage"])
    assert set(stage[:24]) - {-1} == {0, 1, 2}  # three stages each fool some examples
    assert np.all(stage[24:] == -1)  # beyond ε: nobody is fooled
    calls = np.asarray(compact.model_calls)
    assert len(set(calls)) > 3  # examples stop at different points


def test_compacted_pgd_restarts_on_a_vit_are_identical():
    model = dj.ViT(dj.preset("tiny", attention="diff"), rngs=nnx.Rngs(0))
    model_fn = attacks.model_function(model)
    data = djdata.synthetic(16, image_size=8, seed=3)
    x = data.images.astype(np.float32) / 255
    y = np.asarray(model_fn(x)).argmax(1).astype(np.int32)  # every example starts correct
    config = attacks.PGDConfig(4 / 255, steps=2, restarts=4)
    compact = attacks.pgd(model_fn, x, y, jax.random.key(1), config)
    plain = attacks.pgd(model_fn, x, y, jax.random.key(1), config, compact=False)
    assert_identical(compact, plain)
    # Compaction matters: some examples stop after the first restart, others run all four
    # (calls = 1 + 3 per restart).
    restarts = (np.asarray(compact.model_calls) - 1) // 3
    assert len(set(restarts)) >= 2 and restarts.max() == 4


def test_compacted_and_sharded_runs_agree():
    x, y = stage_batch()
    config = attacks.APGDConfig(EPS["linf"], steps=3, loss="dlr-targeted", num_targets=4)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    sharded = attacks.apgd(linear, jax.device_put(x, rows), jax.device_put(y, rows),
                           jax.random.key(0), config)  # fmt: skip
    plain = attacks.apgd(linear, x, y, jax.random.key(0), config, compact=False)
    assert len(sharded.adv_images.sharding.device_set) == jax.device_count()
    assert_identical(sharded, plain)


def test_bucket_sizes_are_powers_of_two_within_the_batch():
    assert [attacks.bucket_size(n, 100) for n in (1, 8, 9, 33, 64, 65, 100)] == [
        8, 8, 16, 64, 64, 100, 100,
    ]  # fmt: skip
    assert attacks.bucket_size(5, 100, multiple=3, floor=1) == 9  # 8 rounded to the devices
    sizes = {attacks.bucket_size(n, 500, 4) for n in range(1, 501)}
    assert len(sizes) <= int(np.ceil(np.log2(500))) + 1
    with pytest.raises(ValueError):
        attacks.bucket_size(0, 10)


def test_compilations_stay_bounded():
    x, y = stage_batch()
    config = attacks.AutoAttackConfig(EPS["linf"], stages=("apgd-ce", "apgd-t"), steps=2,
                                      num_targets=4)  # fmt: skip
    before = compaction._stage_segment._cache_size()
    attacks.autoattack(linear, x, y, jax.random.key(0), config)
    attacks.autoattack(linear, x, y, jax.random.key(1), config)  # same shapes: no new compile
    grown = compaction._stage_segment._cache_size() - before
    # At most one compilation per (stage, bucket size): 2 stages × {8, 16, 32}.
    assert 1 <= grown <= 6
