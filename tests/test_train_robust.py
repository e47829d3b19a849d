"""Training options for robustness: Gaussian-noise training and the attention-Lipschitz penalty.

Checked against hand-computed steps, the exact σmax of the dense float64 Jacobian, finite
differences, and the config hashes the zoo computed before the options existed.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffjax import analysis as an
from diffjax.config import ViTConfig, variant
from diffjax.data.pipeline import to_unit_range
from diffjax.train import (
    NOISE_STREAM,
    POWER_STREAM,
    TrainConfig,
    attention_sigmas,
    init_state,
    smoothed_cross_entropy,
    train_step,
)
from diffjax.vit import ViT

# One tiny DiffViT: 16×16 images, patch 8 → 5 tokens of width 16 (attention Jacobians 80 × 80);
# the training steps use its first block only (fewer compilations).
MODEL = ViTConfig(image_size=16, patch_size=8, width=16, depth=2, num_heads=2,
                  attention="diff", num_classes=4)  # fmt: skip
BASE = TrainConfig(model=MODEL.replace(depth=1), dataset="synthetic", epochs=1, batch_size=8,
                   crop_padding=0, flip=False, warmup_epochs=0.0, grad_clip=None)  # fmt: skip
SPE = 4
# Power steps at which the tiny layers' σ̂ agree with the SVD to 1e-7; the gradient of ‖Jv‖ is
# off by O(‖v − v₁‖) ≈ the square root of that, hence the 1e-4 of the finite-difference check.
ITERS = 400


def old_hash(d: dict) -> str:
    """experiments/zoo.py's config_hash, on a dict."""
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_new_fields_leave_existing_configs_and_hashes_unchanged():
    from diffjax.experiments.zoo import config_hash

    nano = TrainConfig(
        model=variant("Nano/4", depth=2, attention="diff"), dataset="cifar10", epochs=4,
        batch_size=128, learning_rate=2e-3, warmup_epochs=0.5, train_examples=10000,
        test_examples=1000, log_every_steps=20, seed=1,
    )  # fmt: skip
    # Computed by the code before these fields existed (git 696154c, config_hash of to_dict).
    assert config_hash(TrainConfig()) == "3c94dcf7b657"
    assert config_hash(nano) == "bc3a0d60f2df"
    for c in (TrainConfig(), nano):
        d = c.to_dict()
        assert not {"noise_sigma", "lipschitz_penalty", "lipschitz_iters",
                    "lipschitz_examples"} & set(d)  # fmt: skip
        assert TrainConfig.from_dict(d) == c  # an old config.json loads
    used = nano.replace(noise_sigma=0.25, lipschitz_penalty=0.1)
    d = used.to_dict()
    assert d["noise_sigma"] == 0.25 and d["lipschitz_penalty"] == 0.1
    assert "lipschitz_iters" not in d
    assert TrainConfig.from_dict(d) == used
    assert config_hash(used) == old_hash(d) != config_hash(nano)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(noise_sigma=-0.1), "noise_sigma"),
        (dict(noise_sigma=float("nan")), "noise_sigma"),
        (dict(noise_sigma="0.1"), "noise_sigma"),
        (dict(lipschitz_penalty=-1.0), "lipschitz_penalty"),
        (dict(lipschitz_penalty=float("inf")), "lipschitz_penalty"),
        (dict(lipschitz_iters=0), "lipschitz_iters"),
        (dict(lipschitz_iters=2.5), "lipschitz_iters"),
        (dict(lipschitz_penalty=0.1, lipschitz_examples=9), "lipschitz_examples"),
        (dict(lipschitz_penalty=0.1, model=MODEL.replace(scan_layers=True)), "scan_layers"),
        (dict(lipschitz_penalty=0.1, model=MODEL.replace(attention_impl="fused")),
         "attention_impl"),
    ],
)
def test_bad_option_values_are_refused(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BASE.replace(**changes)


def test_unused_penalty_settings_do_not_constrain_the_batch():
    # Without the penalty its example count is inert: a batch smaller than it is fine.
    assert BASE.replace(batch_size=2).lipschitz_examples > 2


def batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    return jnp.asarray(images), jnp.asarray(rng.integers(0, 4, 8), jnp.int32)


def hand_step(config: TrainConfig, images, labels):
    """Loss, gradient norm and σ̂ of step 0, written out from the definitions."""
    params = init_state(config=config, steps_per_epoch=SPE).params
    key = jax.random.fold_in(jax.random.key(config.seed), 0)
    x = to_unit_range(images)  # no crop, no flip
    if config.noise_sigma:
        x = x + config.noise_sigma * jax.random.normal(jax.random.fold_in(key, NOISE_STREAM),
                                                       x.shape)  # fmt: skip
    graphdef = nnx.split(ViT(config.model, rngs=nnx.Rngs(0)), nnx.Param)[0]

    def objective(p):
        model = nnx.merge(graphdef, p)
        ce = smoothed_cross_entropy(model(x), labels, config.label_smoothing).mean()
        if not config.lipschitz_penalty:
            return ce, (ce, 0.0)
        s = attention_sigmas(model, x[: config.lipschitz_examples],
                             jax.random.fold_in(key, POWER_STREAM), config.lipschitz_iters)
        return ce + config.lipschitz_penalty * s.mean(), (ce, s.mean())  # fmt: skip

    (_, (ce, s)), g = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    return float(ce), float(optax.tree.norm(g)), float(s)


def run_step(config, images, labels):
    state = init_state(config=config, steps_per_epoch=SPE)
    _, m = train_step(state, images, labels, config=config, steps_per_epoch=SPE)
    return jax.device_get(m)


def test_noise_training_equals_a_hand_computed_step_on_noised_inputs():
    images, labels = batch()
    assert BASE.noise_sigma == 0
    clean = run_step(BASE, images, labels)
    # The noise and the power iteration have streams of their own: neither is the augmentation
    # or the dropout key of the step.
    key = jax.random.fold_in(jax.random.key(BASE.seed), 0)
    streams = (*jax.random.split(key), jax.random.fold_in(key, NOISE_STREAM),
               jax.random.fold_in(key, POWER_STREAM))  # fmt: skip
    assert len({tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in streams}) == 4
    noisy = BASE.replace(noise_sigma=0.5)
    m = run_step(noisy, images, labels)
    ce, gn, _ = hand_step(BASE, images, labels)
    np.testing.assert_allclose([clean["loss"], clean["grad_norm"]], [ce, gn], rtol=1e-5)
    ce, gn, _ = hand_step(noisy, images, labels)
    np.testing.assert_allclose([m["loss"], m["grad_norm"]], [ce, gn], rtol=1e-5)
    assert abs(m["loss"] - clean["loss"]) > 1e-3  # the noise reaches the loss
    assert "attention_sigma" not in m


def test_penalised_step_equals_a_hand_computed_objective():
    images, labels = batch(1)
    config = BASE.replace(lipschitz_penalty=0.5, lipschitz_iters=4, lipschitz_examples=2)
    m = run_step(config, images, labels)
    ce, gn, s = hand_step(config, images, labels)
    np.testing.assert_allclose([m["loss"], m["grad_norm"], m["attention_sigma"]], [ce, gn, s],
                               rtol=1e-5)  # fmt: skip
    plain = run_step(BASE, images, labels)
    assert plain["loss"] == pytest.approx(m["loss"], rel=1e-6)  # same CE, other objective
    assert abs(plain["grad_norm"] - m["grad_norm"]) > 1e-4


@jax.jit
def dense_jacobians(model, x):
    """Every layer's dense attention Jacobian at LN1(h_l): [L, B, N·D, N·D]."""
    out = []
    for layer in range(model.config.depth):
        u = an.layer_input(model, x, layer, "attention_input")
        j = jax.vmap(jax.jacfwd(lambda z, i=layer: an.attention_layer(model, z, i)))(u)
        out.append(j.reshape(u.shape[0], u[0].size, u[0].size))
    return jnp.stack(out)


def exact_sigmas(model, x) -> np.ndarray:
    """σmax of every layer's dense attention Jacobian, by float64 NumPy SVD: [L, B]."""
    return np.linalg.svd(np.asarray(dense_jacobians(model, x)), compute_uv=False)[..., 0]


def test_power_iteration_reaches_exact_sigma_and_its_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        model = an.with_dtype(ViT(MODEL, rngs=nnx.Rngs(3)), "float64")
        x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), jnp.float64)
        exact = exact_sigmas(model, x)
        key = jax.random.key(1)
        sigmas = jax.jit(attention_sigmas, static_argnums=3)
        few = np.asarray(sigmas(model, x, key, 2))
        many = np.asarray(sigmas(model, x, key, ITERS))
        assert np.all(few <= exact * (1 + 1e-12))  # power iteration is a lower bound
        np.testing.assert_allclose(many, exact, rtol=1e-7)

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        leaves, tree = jax.tree.flatten(params)
        d = tree.unflatten([jax.random.normal(jax.random.key(i), p.shape, p.dtype)
                            for i, p in enumerate(leaves)])  # fmt: skip

        def penalty(p):
            return attention_sigmas(nnx.merge(graphdef, p, rest), x, key, ITERS).mean()

        grad = jax.jit(jax.grad(penalty))(params)
        directional = sum(float(jnp.vdot(g, v)) for g, v in
                          zip(jax.tree.leaves(grad), jax.tree.leaves(d), strict=True))  # fmt: skip
        eps = 1e-5

        def shifted(t):
            return nnx.merge(graphdef, jax.tree.map(lambda p, v: p + t * v, params, d), rest)

        fd = (exact_sigmas(shifted(eps), x).mean() - exact_sigmas(shifted(-eps), x).mean()) / (
            2 * eps
        )
        assert directional == pytest.approx(fd, rel=1e-4)
