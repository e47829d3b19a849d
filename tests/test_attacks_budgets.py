"""PGD-ℓ2's default step reaches the boundary of a two-class linear model (closed form), and
several budgets in one call equal separate calls."""

import dataclasses

import jax
import numpy as np
import pytest

from diffjax import attacks
from diffjax.attacks import compaction
from tests.test_attacks_oracle import EPS, linear, make_batch

SHAPE = (8, 8, 3)
D = int(np.prod(SHAPE))
V = np.random.default_rng(5).normal(0, 1, (2, D))  # two-class weights
C = np.array([0.3, -0.3])


def two_class(x):
    return x.reshape(x.shape[0], -1) @ jax.numpy.asarray(V.T, "float32") + C.astype("float32")


def two_class_batch(n=40, dist=0.05, seed=0):
    """n examples at ℓ2 distance ``dist`` from the boundary z₁ = z₀ (closed form
    |v·x + c|/‖v‖, v = w₁ − w₀), alternating classes, far enough inside the box."""
    rng = np.random.default_rng(seed)
    v, c = V[1] - V[0], C[1] - C[0]
    xs, ys = [], []
    for i in range(n):
        y = i % 2
        base = rng.uniform(0.3, 0.7, D)
        target = -dist * np.linalg.norm(v) if y == 0 else dist * np.linalg.norm(v)
        xs.append(base + (target - (v @ base + c)) / (v @ v) * v)
        ys.append(y)
    x = np.stack(xs).astype(np.float32)
    got = np.abs(x.astype(np.float64) @ v + c) / np.linalg.norm(v)
    np.testing.assert_allclose(got, dist, rtol=1e-4)
    assert x.min() > 2 * dist and x.max() < 1 - 2 * dist  # the box never binds
    return x.reshape(n, *SHAPE), np.array(ys, np.int32)


@pytest.mark.parametrize("steps", [20, 1000])
def test_default_pgd_l2_fools_every_example_at_102_percent_of_the_distance(steps):
    dist = 0.05
    x, y = two_class_batch(dist=dist)
    config = attacks.PGDConfig(1.02 * dist, "l2", steps=steps)  # defaults: random start, α
    result = attacks.pgd(two_class, x, y, jax.random.key(0), config)
    adv = np.asarray(result.adv_images, np.float64).reshape(len(x), -1)
    assert np.all(np.linalg.norm(adv - x.reshape(len(x), -1), axis=1) <= 1.02 * dist * (1 + 1e-5))
    pred = (adv @ V.T + C).argmax(1)  # float64 re-evaluation
    assert np.all(pred != y), f"{np.sum(pred != y)}/40 fooled"
    np.testing.assert_array_equal(np.asarray(result.success), pred != y)


def test_madry_step_in_l2_falls_short_and_nothing_beats_the_distance():
    dist = 0.05
    x, y = two_class_batch(dist=dist)
    eps = 1.02 * dist
    madry = attacks.PGDConfig(eps, "l2", steps=20, step_size=2.5 * eps / 20)
    fooled = np.asarray(attacks.pgd(two_class, x, y, jax.random.key(0), madry).success)
    assert fooled.sum() < 40  # the old default misses some: its whole path is only 2.5ε long
    below = attacks.PGDConfig(0.98 * dist, "l2", steps=20)
    assert not np.any(np.asarray(attacks.pgd(two_class, x, y, jax.random.key(0), below).success))


def test_several_budgets_in_one_call_equal_separate_calls():
    x, y, _ = make_batch("linf")
    radii = [0.5 * EPS["linf"], EPS["linf"], 2 * EPS["linf"]]
    config = attacks.PGDConfig(0.0, steps=10)
    before = compaction._run_plan._cache_size()
    together = attacks.attack_epsilons(attacks.pgd, linear, x, y, jax.random.key(2), config,
                                       radii, compact=False)  # fmt: skip
    assert compaction._run_plan._cache_size() - before == 1  # one compilation for all ε
    fooled = []
    for eps, got in zip(radii, together, strict=True):
        alone = attacks.pgd(linear, x, y, jax.random.key(2), dataclasses.replace(config, eps=eps))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(alone), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.all(np.asarray(got.linf) <= eps * (1 + 1e-5) + 1e-7)  # float32 rounding
        fooled.append(int(np.sum(got.success)))
    assert fooled[0] < fooled[1] == 8 <= fooled[2]  # the budgets differ in outcome
    # Compacted, the same numbers.
    compact = attacks.attack_epsilons(attacks.pgd, linear, x, y, jax.random.key(2), config, radii)
    for a, b in zip(jax.tree.leaves(compact), jax.tree.leaves(together), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("radii, match", [([], "non-empty"), ([0.1, -1.0], ">= 0"),
                                          ([float("nan")], "finite")])  # fmt: skip
def test_bad_budgets_raise(radii, match):
    x, y, _ = make_batch("linf")
    with pytest.raises(ValueError, match=match):
        attacks.attack_epsilons(attacks.pgd, linear, x, y, jax.random.key(0),
                                attacks.PGDConfig(0.0), radii)  # fmt: skip
