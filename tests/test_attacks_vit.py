"""Attacks on a small trained ViT: APGD is never weaker than PGD at the same budget and steps,
CW fools every correctly classified example, and every returned example re-checks against a
fresh evaluation of the model (another batch composition: one image at a time)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import diffjax as dj
from diffjax import attacks
from diffjax.data import synthetic
from diffjax.vit import functional

EPS = 10 / 255  # the synthetic classes differ by 25.5/255 in mean colour


@pytest.fixture(scope="module")
def trained():
    """A tiny ViT (8x8 images, width 16, depth 2) trained for 200 Adam steps on synthetic data,
    and 64 test examples."""
    apply, params = functional(dj.ViT(dj.preset("tiny"), rngs=nnx.Rngs(0)))
    train = synthetic(512, image_size=8, seed=0)
    images = jnp.asarray(train.images, jnp.float32) / 255
    labels = jnp.asarray(train.labels)
    optimizer = optax.adam(3e-3)

    @jax.jit
    def fit(params):
        def step(i, carry):
            p, state = carry
            idx = jax.random.randint(jax.random.fold_in(jax.random.key(0), i), (64,), 0, 512)
            grad = jax.grad(
                lambda p: jnp.mean(attacks.cross_entropy(apply(p, images[idx]), labels[idx]))
            )(p)
            updates, state = optimizer.update(grad, state, p)
            return optax.apply_updates(p, updates), state

        return jax.lax.fori_loop(0, 200, step, (params, optimizer.init(params)))[0]

    model_fn = jax.tree_util.Partial(apply, fit(params))
    test = synthetic(64, image_size=8, seed=1)
    x = test.images.astype(np.float32) / 255
    y = test.labels
    accuracy = np.mean(np.asarray(model_fn(x)).argmax(1) == y)
    assert accuracy > 0.6, accuracy  # the model has learnt something worth attacking
    return model_fn, x, y


def recheck(model_fn, result, x, y, eps, norm):
    adv = np.asarray(result.adv_images)
    assert np.all(adv >= 0) and np.all(adv <= 1)
    delta = (adv.astype(np.float64) - x).reshape(len(x), -1)
    if eps is not None:
        size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        assert np.all(size <= eps * (1 + 1e-5) + 1e-7)
    np.testing.assert_allclose(result.l2, np.linalg.norm(delta, axis=1), rtol=1e-5, atol=1e-7)
    single = jax.jit(lambda f, a: f(a[None])[0])
    logits = np.stack([np.asarray(single(model_fn, a)) for a in adv])
    np.testing.assert_allclose(result.logits, logits, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(result.success), logits.argmax(1) != y)


def test_apgd_is_never_weaker_than_pgd(trained):
    model_fn, x, y = trained
    steps = 10
    pgd = attacks.pgd(model_fn, x, y, jax.random.key(0), attacks.PGDConfig(EPS, steps=steps))
    apgd = attacks.apgd(model_fn, x, y, jax.random.key(0), attacks.APGDConfig(EPS, steps=steps))
    recheck(model_fn, pgd, x, y, EPS, "linf")
    recheck(model_fn, apgd, x, y, EPS, "linf")
    s_pgd, s_apgd = attacks.summarize_result(pgd, y), attacks.summarize_result(apgd, y)
    assert 0.1 < s_pgd.asr < 0.9, s_pgd.asr  # a budget where the comparison means something
    assert s_apgd.asr >= s_pgd.asr - 1 / s_pgd.clean_correct, (s_apgd.asr, s_pgd.asr)
    # Model calls: the clean evaluation, plus steps + 1 per run for initially correct examples.
    correct = np.asarray(pgd.clean_logits).argmax(1) == y
    for result in (pgd, apgd):
        np.testing.assert_array_equal(result.model_calls, np.where(correct, steps + 2, 1))


def test_cw_fools_every_correct_example(trained):
    model_fn, x, y = trained
    config = attacks.CWConfig(
        binary_search_steps=5, max_iterations=100, learning_rate=0.05, initial_const=0.1
    )
    result = attacks.cw_l2(model_fn, x, y, jax.random.key(0), config)
    recheck(model_fn, result, x, y, None, "l2")
    summary = attacks.summarize_result(result, y)
    assert summary.asr == 1.0
    assert np.all(np.asarray(result.success))  # misclassified ones count as fooled at 0
    assert summary.mean_l2 > 0


def test_l2_autoattack_and_its_rand_version_on_the_trained_model(trained):
    model_fn, x, y = trained
    x, y = x[:16], y[:16]
    eps = 0.5
    config = attacks.AutoAttackConfig(eps, "l2", steps=5, num_targets=3, square_queries=100)
    result = attacks.autoattack(model_fn, x, y, jax.random.key(0), config)
    recheck(model_fn, result, x, y, eps, "l2")
    stage = np.asarray(result.extras["stage"])
    apgd = attacks.apgd(model_fn, x, y, jax.random.key(0), attacks.APGDConfig(eps, "l2", steps=5))
    assert 0 < np.sum(apgd.success) < 16  # a budget where later stages have work to do
    assert np.sum(result.success) >= np.sum(apgd.success) - 1
    assert np.all(
        (stage >= 0)
        == (np.asarray(result.success) & (np.asarray(result.clean_logits).argmax(1) == y))
    )

    # Square-ℓ2 alone, gradient-free: within the ball, success re-checked.
    square = attacks.square(
        model_fn, x, y, jax.random.key(1), attacks.SquareConfig(eps, 200, norm="l2")
    )
    recheck(model_fn, square, x, y, eps, "l2")
    assert np.sum(square.success) > np.sum(np.asarray(square.clean_logits).argmax(1) != y)

    # rand: the model made random by Gaussian input noise drawn from the per-example keys.
    def noisy(images, keys):
        noise = jax.vmap(lambda k: 0.02 * jax.random.normal(k, images.shape[1:]))(keys)
        return model_fn(jnp.clip(images + noise, 0, 1))

    rand = attacks.AutoAttackConfig(10 / 255, version="rand", steps=5, eot_iter=4)
    out = attacks.autoattack(noisy, x, y, jax.random.key(0), rand)
    adv = np.asarray(out.adv_images, np.float64)
    assert np.all(np.abs(adv - x).reshape(16, -1).max(1) <= 10 / 255 * (1 + 1e-5))
    # The success flags are those of the model's draw at the returned image; a fresh draw of
    # the noise agrees on almost all of them (the noise is small).
    fresh = np.asarray(
        noisy(jnp.asarray(adv, jnp.float32), jax.random.split(jax.random.key(9), 16))
    )
    assert np.mean((fresh.argmax(1) != y) == np.asarray(out.success)) >= 0.8
    assert np.sum(out.success) > np.sum(np.asarray(out.clean_logits).argmax(1) != y)
