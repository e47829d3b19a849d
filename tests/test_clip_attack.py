"""The CLIP attack objective: −cos to the true prompt, its gradient, and the success rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax import attacks
from diffjax.clip.attack import DEFAULT_PROMPT, prompt_classifier, prompt_cosine_loss
from diffjax.clip.config import clip_preset
from diffjax.clip.model import CLIP
from diffjax.clip.tokenizer import default_tokenizer

NAMES = ("cat", "dog", "ship")


@pytest.fixture(scope="module")
def setup():
    model = CLIP(clip_preset("tiny_diff"), rngs=nnx.Rngs(3))
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    return model, prompt_classifier(model, NAMES), images, labels


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_loss_is_minus_cosine_to_the_true_prompt(setup):
    model, clf, images, labels = setup
    prompts = default_tokenizer()([DEFAULT_PROMPT.format(n) for n in NAMES])
    cos = _unit(model.encode_image(images)) @ _unit(model.encode_text(prompts)).T
    loss = prompt_cosine_loss(clf(images), jnp.asarray(labels))
    np.testing.assert_allclose(loss, -cos[np.arange(4), labels], rtol=1e-5, atol=1e-6)


def test_gradient_ascent_lowers_the_true_cosine(setup):
    _, clf, images, labels = setup

    def loss(x):
        return prompt_cosine_loss(clf(x), jnp.asarray(labels))

    grad = jax.grad(lambda x: loss(x).sum())(jnp.asarray(images))
    # Central differences along a random direction (float32 model: loose tolerance).
    v = np.random.default_rng(1).normal(size=images.shape).astype(np.float32)
    h = 1e-3
    fd = (loss(images + h * v).sum() - loss(images - h * v).sum()) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=2e-2)
    # One signed step that ascends the loss must lower every true-prompt cosine.
    step = jnp.clip(images + 1e-3 * jnp.sign(grad), 0.0, 1.0)
    assert (loss(step) > loss(images)).all()


def test_pgd_with_the_cosine_loss_lowers_the_true_cosine_within_the_ball(setup):
    _, clf, images, labels = setup
    model_fn = attacks.model_function(clf)
    eps = 4 / 255
    config = attacks.PGDConfig(eps=eps, steps=5, loss=prompt_cosine_loss, random_start=False)
    result = attacks.pgd(model_fn, jnp.asarray(images), jnp.asarray(labels), jax.random.key(0),
                         config)  # fmt: skip
    adv = np.asarray(result.adv_images, np.float64)
    assert np.abs(adv - images).max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    true_cos = lambda x: -np.asarray(prompt_cosine_loss(clf(x), jnp.asarray(labels)))  # noqa: E731
    fooled = ~result.success
    # Unfooled examples end at their best (lowest-cosine) point; none may rise above the start.
    assert np.all(true_cos(adv.astype(np.float32))[fooled] <= true_cos(images)[fooled] + 1e-6)
    with pytest.raises(ValueError):
        prompt_cosine_loss(jnp.zeros((4, 3)), jnp.zeros((3,), jnp.int32))
