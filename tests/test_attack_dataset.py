"""Batched dataset attacks: independent re-checks catch bad results; batching changes nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import attacks
from diffjax import data as djdata


@pytest.fixture(scope="module")
def setup():
    model = dj.ViT(dj.preset("tiny", attention="diff"), rngs=nnx.Rngs(0))
    data = djdata.synthetic(12, image_size=8, seed=3)
    return attacks.model_function(model), data


def test_results_do_not_depend_on_batch_size(setup):
    model_fn, data = setup
    config = attacks.PGDConfig(eps=8 / 255, steps=3)
    key = jax.random.key(5)
    a = attacks.attack_dataset(attacks.pgd, model_fn, data.images, data.labels, key, config,
                               batch_size=4)  # fmt: skip
    b = attacks.attack_dataset(attacks.pgd, model_fn, data.images, data.labels, key, config,
                               batch_size=8)  # fmt: skip
    assert set(a) == set(b) and len(a["index"]) == 12
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)
    assert np.all(a["linf"] <= 8 / 255 + 1e-6)
    s = attacks.summarize_records(a)
    assert s.examples == 12 and s.clean_correct == int(np.sum(a["clean_pred"] == a["label"]))


def _tampered(offset=0.0, flip=False):
    def attack(model_fn, images, labels, key, config, ids=None):
        result = attacks.pgd(model_fn, images, labels, key, config, ids=ids)
        adv = jnp.clip(result.adv_images + offset, 0, 1)
        success = ~result.success if flip else result.success
        return dataclasses.replace(result, adv_images=adv, success=success)

    return attack


@pytest.mark.parametrize("offset, flip, match", [(0.1, False, "exceeds eps"),
                                                 (0.0, True, "disagree")])  # fmt: skip
def test_recheck_rejects_examples_outside_the_ball_or_with_wrong_flags(setup, offset, flip, match):
    model_fn, data = setup
    config = attacks.PGDConfig(eps=2 / 255, steps=2)
    with pytest.raises(attacks.AttackCheckError, match=match):
        attacks.attack_dataset(_tampered(offset, flip), model_fn, data.images, data.labels,
                               jax.random.key(0), config, batch_size=4)  # fmt: skip


def test_recheck_rejects_images_outside_the_box(setup):
    model_fn, data = setup
    x = data.images[:4].astype(np.float32) / 255
    with pytest.raises(attacks.AttackCheckError, match=r"leave \[0, 1\]"):
        attacks.recheck(model_fn, x, x + 2.0, data.labels[:4], np.zeros(4, bool))


def test_wilson_interval_contains_the_rate_at_the_edges():
    lo, hi = attacks.wilson_interval(0, 8)
    assert lo == 0.0 < hi < 1
    lo, hi = attacks.wilson_interval(8, 8)
    assert 0 < lo < hi == 1.0
    assert attacks.wilson_interval(0, 0) is None
