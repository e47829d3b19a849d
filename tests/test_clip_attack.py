"""The CLIP attack objective: −cos to the true prompt, its gradient, and the success rate."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.clip.attack import (
    DEFAULT_PROMPT,
    attack_success,
    prompt_classifier,
    prompt_cosine_loss,
)
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


def test_attack_success():
    labels = np.array([0, 1, 2, 0])
    clean = np.eye(3)[[0, 1, 0, 0]]  # examples 0, 1, 3 correct
    adv = np.eye(3)[[1, 1, 2, 2]]  # 0 and 3 flipped, 2 became correct
    r = attack_success(clean, adv, labels)
    assert r["clean_accuracy"] == 0.75 and r["adversarial_accuracy"] == 0.5
    assert r["asr"] == 2 / 3 and r["num_clean_correct"] == 3
    assert math.isnan(attack_success(clean, adv, np.array([2, 2, 1, 1]))["asr"])
    with pytest.raises(ValueError):
        attack_success(clean, adv[:3], labels)
    with pytest.raises(ValueError):
        prompt_cosine_loss(jnp.zeros((4, 3)), jnp.zeros((3,), jnp.int32))
