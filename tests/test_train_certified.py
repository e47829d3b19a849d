"""Certified and adversarial training (TrainConfig.robust_training): the bounds' gradients against
finite differences, the IBP loss against an independent float64 NumPy interval computation, the
ε = 0 step against the natural step, CROWN-IBP against IBP and the adversary, the certificates of
an IBP-trained model against the adversary, exact resume, and the refusals."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffjax import verify
from diffjax.analysis import with_dtype
from diffjax.attack_config import PGDConfig
from diffjax.attacks import pgd
from diffjax.attacks.interface import model_function
from diffjax.config import ViTConfig
from diffjax.data import synthetic
from diffjax.data.pipeline import to_unit_range
from diffjax.train import (
    PGD_STREAM,
    TrainConfig,
    init_state,
    robust_schedule,
    train,
    train_step,
)
from diffjax.vit import ViT
from tests.analysis_models import randomise_batch_norms
from tests.test_train import Killed, assert_trees_equal
from tests.test_verify_vit import _adversary

# The verification-friendly ViT of certified training, as small as it gets: 8×8 images, 4
# patches + CLS, width 8, one block, ReLU, BatchNorm, mean pooling, 3 classes.
MODEL = ViTConfig(image_size=8, patch_size=4, width=8, depth=1, num_heads=2, num_classes=3,
                  activation="relu", norm="batchnorm", pool="mean")  # fmt: skip
BASE = TrainConfig(model=MODEL, dataset="synthetic", epochs=2, batch_size=8, crop_padding=0,
                   flip=False, warmup_epochs=0.0, grad_clip=None)  # fmt: skip
SPE = 4
EPS = 0.02


@functools.cache
def _model64(seed=0):
    """A float64 view of the test model with BatchNorms far from the identity."""
    with jax.enable_x64():
        return with_dtype(randomise_batch_norms(ViT(MODEL, rngs=nnx.Rngs(seed)), seed), "float64")


def _images(n=2, seed=1, dtype=jnp.float64):
    return jax.random.uniform(jax.random.key(seed), (n, 8, 8, 3), dtype)


def _labels(model, x):
    return jnp.argmax(model(x), -1)


# --- An independent interval computation in NumPy (float64, midpoint-radius form) -------------


def _p(v):
    return np.asarray(v[...], np.float64)


def _affine(m, r, layer):
    """x @ W + b on the interval m ± r: the midpoint maps exactly, the radius through |W|."""
    w = _p(layer.kernel)
    return m @ w + _p(layer.bias), r @ np.abs(w)


def _batchnorm(m, r, bn):
    s = _p(bn.scale) / np.sqrt(_p(bn.var) + bn.epsilon)
    return (m - _p(bn.mean)) * s + _p(bn.bias), r * np.abs(s)


def _product(mx, rx, my, ry):
    """x @ y for intervals: |xy − mx my| ≤ |mx| ry + rx (|my| + ry), batched over heads."""
    return mx @ my, np.abs(mx) @ ry + rx @ (np.abs(my) + ry)


def numpy_ibp_margins(model, x, label, eps):
    """Lower bounds of z_c − z_j over B∞(x, eps) ∩ [0, 1]^d by interval arithmetic through the
    test model (one image [H, W, C]), written from the architecture, not from the program.
    The softmax is 1 / Σ_j exp(z_j − z_i) with the differences' intervals taken directly."""
    c = model.config
    x = np.asarray(x, np.float64)
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    m, r = (lo + hi) / 2, (hi - lo) / 2
    m, r = (m - np.array(c.mean)) / np.array(c.std), r / np.array(c.std)
    g, p = c.image_size // c.patch_size, c.patch_size

    def patches(a):
        return a.reshape(g, p, g, p, c.channels).transpose(0, 2, 1, 3, 4).reshape(g * g, -1)

    m, r = _affine(patches(m), patches(r), model.patch_embed)
    m = np.concatenate([_p(model.cls_token)[0], m]) + _p(model.pos_embed)[0]
    r = np.concatenate([np.zeros((1, c.width)), r])
    blk = model.blocks[0]
    heads, d = c.num_heads, c.width // c.num_heads

    def split(a):  # [N, D] → [H, N, d]
        return a.reshape(-1, heads, d).transpose(1, 0, 2)

    um, ur = _batchnorm(m, r, blk.norm1)
    (qm, qr), (km, kr), (vm, vr) = (
        map(split, _affine(um, ur, getattr(blk.attn, n))) for n in ("q", "k", "v")
    )
    zm, zr = _product(qm * d**-0.5, qr * d**-0.5, km.transpose(0, 2, 1), kr.transpose(0, 2, 1))
    tm = zm[..., None, :] - zm[..., :, None]  # [H, query, i, j] = z_j − z_i
    tr = zr[..., None, :] + zr[..., :, None]
    s_lo, s_hi = np.exp(tm - tr).sum(-1), np.exp(tm + tr).sum(-1)
    a_lo, a_hi = 1 / s_hi, 1 / s_lo
    om, orad = _product((a_lo + a_hi) / 2, (a_hi - a_lo) / 2, vm, vr)
    merge = lambda a: a.transpose(1, 0, 2).reshape(-1, c.width)  # noqa: E731
    om, orad = _affine(merge(om), merge(orad), blk.attn.out)
    m, r = m + om, r + orad
    hm, hr = _affine(*_batchnorm(m, r, blk.norm2), blk.fc1)
    h_lo, h_hi = np.maximum(hm - hr, 0), np.maximum(hm + hr, 0)
    hm, hr = _affine((h_lo + h_hi) / 2, (h_hi - h_lo) / 2, blk.fc2)
    m, r = m + hm, r + hr
    m, r = m[1:].mean(0), r[1:].mean(0)
    zm, zr = _affine(*_batchnorm(m, r, model.norm), model.head)
    low = (zm[label] - zr[label]) - (zm + zr)
    low[label] = 0.0
    return low


def numpy_ibp_batch(model, images, labels, eps):
    """[B, K]: :func:`numpy_ibp_margins` of every image."""
    pairs = zip(np.asarray(images), np.asarray(labels), strict=True)
    return np.stack([numpy_ibp_margins(model, x, int(c), eps) for x, c in pairs])


def _ce(logits, labels, smoothing):
    k = logits.shape[-1]
    targets = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(np.mean(-(targets * logp).sum(-1)))


# --- The bounds -------------------------------------------------------------------------------


def test_ibp_margins_equal_a_numpy_interval_computation():
    model = _model64()
    with jax.enable_x64():
        x = _images()
        labels = _labels(model, x)
        low = np.asarray(verify.training_margins(model, x, labels, EPS))
    want = numpy_ibp_batch(model, x, labels, EPS)
    assert np.all(np.isfinite(want)) and np.any(want < 0)  # a bound, not the clean margin
    # The verifier widens every interval by its rounding slack, 2⁻⁴⁰ relative.
    np.testing.assert_allclose(low, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [None, 0.5])
def test_bound_gradient_matches_central_finite_differences(beta):
    model = _model64()
    with jax.enable_x64():
        x = _images()
        labels = _labels(model, x)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        # The float64 view computes in float64 from float32 parameters: differentiate in float64.
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

        def total(p):
            m = nnx.merge(graphdef, p, rest)
            b = None if beta is None else jnp.float64(beta)
            return jnp.sum(verify.training_margins(m, x, labels, EPS, b))

        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(3), len(leaves))
        v = jax.tree.unflatten(tree, [jax.random.normal(k, a.shape, a.dtype)
                                      for k, a in zip(keys, leaves, strict=True)])  # fmt: skip
        grad = jax.jit(jax.grad(total))(params)
        slope = sum(map(jnp.vdot, jax.tree.leaves(grad), jax.tree.leaves(v)))
        h = 1e-6
        f = jax.jit(lambda t: total(jax.tree.map(lambda a, d: a + t * d, params, v)))
        fd = (f(h) - f(-h)) / (2 * h)
    assert abs(float(slope)) > 1e-3
    np.testing.assert_allclose(float(slope), float(fd), rtol=1e-6)


def test_crown_ibp_is_tighter_than_ibp_here_and_both_hold_against_the_adversary():
    model = _model64()
    with jax.enable_x64():
        x = _images(3, seed=2)
        labels = _labels(model, x)
        ibp = np.asarray(verify.training_margins(model, x, labels, EPS))
        crown = np.asarray(verify.training_margins(model, x, labels, EPS, jnp.float64(1.0)))
        found = _adversary(model, x, labels, EPS, "linf", steps=30, restarts=3)
    # CROWN-IBP is not tighter than IBP on every model; on this one it is, by a margin.
    assert np.all(crown >= ibp) and np.mean(crown - ibp) > 1e-3
    # Sound: below the smallest margin the adversary reached in the ball (no rounding slack in
    # the training path: 1e-9 is far above float64 rounding, far below the gaps).
    assert np.all(ibp <= found + 1e-9) and np.all(crown <= found + 1e-9)


# --- The training step ------------------------------------------------------------------------


def _batch(seed=0):
    data = synthetic(8, image_size=8, num_classes=3, seed=seed)
    return jnp.asarray(data.images), jnp.asarray(data.labels)


def _step(config, images, labels, steps=1):
    state = init_state(config=config, steps_per_epoch=SPE)
    for _ in range(steps):
        state, metrics = train_step(state, images, labels, config=config, steps_per_epoch=SPE)
    return jax.device_get(state), jax.device_get(metrics)


def test_schedule_warms_up_then_ramps_eps_kappa_and_beta():
    config = BASE.replace(epochs=4, robust_training="crown-ibp", robust_eps=0.1,
                          robust_warmup_epochs=1, robust_ramp_epochs=2, robust_kappa_start=1.0,
                          robust_kappa_end=0.5)  # fmt: skip
    # spe 10: warmup steps 0..10 (ε = 0), ramp over steps 10..30, then ε, κ, β held.
    want = {0: (0, 1, 1), 9: (0, 1, 1), 10: (0, 1, 1), 15: (0.025, 0.875, 0.75),
            20: (0.05, 0.75, 0.5), 30: (0.1, 0.5, 0), 39: (0.1, 0.5, 0)}  # fmt: skip
    for step, expected in want.items():
        got = [float(v) for v in robust_schedule(config, 10, jnp.int32(step))]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=str(step))
    sudden = config.replace(robust_ramp_epochs=0)
    assert [float(v) for v in robust_schedule(sudden, 10, jnp.int32(9))] == [0.0, 1.0, 1.0]
    np.testing.assert_allclose([float(v) for v in robust_schedule(sudden, 10, jnp.int32(10))],
                               [0.1, 0.5, 0.0], rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("changes", [dict(robust_training="ibp", robust_eps=0.0),
                                     dict(robust_training="crown-ibp", robust_eps=0.05,
                                          robust_warmup_epochs=1.0)])  # fmt: skip
def test_at_eps_zero_the_step_is_the_natural_step(changes):
    images, labels = _batch()
    natural, m0 = _step(BASE, images, labels)
    robust, m1 = _step(BASE.replace(**changes), images, labels)
    assert_trees_equal(robust.params, natural.params)
    assert m1["loss"] == m0["loss"] and m1["robust_loss"] == m0["loss"]
    assert m1["robust_eps"] == 0.0


def test_ibp_step_loss_equals_the_numpy_interval_loss():
    config = BASE.replace(robust_training="ibp", robust_eps=EPS, robust_kappa_end=0.25,
                          label_smoothing=0.1)  # fmt: skip
    images, labels = _batch()
    state = init_state(config=config, steps_per_epoch=SPE)
    model = nnx.merge(nnx.graphdef(ViT(MODEL, rngs=nnx.Rngs(0))), jax.device_get(state.params))
    _, metrics = train_step(state, images, labels, config=config, steps_per_epoch=SPE)
    x = np.asarray(to_unit_range(images), np.float64)
    y = np.asarray(labels)
    robust = -numpy_ibp_batch(model, x, y, EPS)
    want = _ce(robust, y, 0.1)
    np.testing.assert_allclose(metrics["robust_loss"], want, rtol=1e-4)
    model = nnx.merge(nnx.graphdef(model), jax.tree.map(jnp.asarray, nnx.state(model)))
    model.train()  # the natural loss: BatchNorm on the batch's statistics
    natural = optax.softmax_cross_entropy(
        model(jnp.asarray(x, jnp.float32)), optax.smooth_labels(jax.nn.one_hot(y, 3), 0.1)
    ).mean()
    np.testing.assert_allclose(metrics["loss"], 0.25 * natural + 0.75 * want, rtol=1e-4)
    assert float(metrics["robust_eps"]) == np.float32(EPS) and metrics["kappa"] == 0.25


def test_pgd_step_trains_on_the_projects_pgd_example():
    config = BASE.replace(robust_training="pgd", robust_eps=0.03, pgd_steps=3)
    images, labels = _batch()
    state = init_state(config=config, steps_per_epoch=SPE)
    model = nnx.merge(nnx.graphdef(ViT(MODEL, rngs=nnx.Rngs(0))), jax.device_get(state.params))
    _, metrics = train_step(state, images, labels, config=config, steps_per_epoch=SPE)
    x = to_unit_range(images)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 0), PGD_STREAM)
    adv = pgd(model_function(model), x, labels, key, PGDConfig(eps=0.03, steps=3),
              compact=False).adv_images  # fmt: skip
    ce = optax.softmax_cross_entropy(model(adv), optax.smooth_labels(jax.nn.one_hot(labels, 3),
                                                                     0.1)).mean()  # fmt: skip
    np.testing.assert_allclose(metrics["robust_loss"], ce, rtol=1e-5)
    clean = optax.softmax_cross_entropy(model(x), optax.smooth_labels(jax.nn.one_hot(labels, 3),
                                                                      0.1)).mean()  # fmt: skip
    assert metrics["robust_loss"] > clean


# --- A run: certificates of the trained model, exact resume -----------------------------------

RUN = BASE.replace(epochs=3, batch_size=16, learning_rate=3e-3, train_examples=64,
                   test_examples=32, eval_batch_size=32, checkpoint_every_steps=3,
                   log_every_steps=1, robust_training="ibp", robust_eps=2 / 255,
                   robust_warmup_epochs=0.5, robust_ramp_epochs=1.5)  # fmt: skip


def _data():
    return dict(train_data=synthetic(64, 8, 3, seed=5), test_data=synthetic(32, 8, 3, seed=6))


@pytest.fixture(scope="module")
def ibp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ibp")
    model, summary = train(RUN, run_dir, **_data())
    return run_dir, model, summary


def test_ibp_trained_models_certificates_hold_against_the_adversary(ibp_run):
    _, model, _ = ibp_run
    data = synthetic(8, 8, 3, seed=6)
    eps = 2 / 255
    with jax.enable_x64():
        m64 = with_dtype(model, "float64")
        x = jnp.asarray(data.images, jnp.float64) / 255
        labels = jnp.asarray(data.labels)
        low = np.asarray(verify.margin_lower_bounds(m64, x, labels, eps, "linf", "crown"))
        found = _adversary(m64, x, labels, eps, "linf", steps=30, restarts=3)
    assert np.all(np.isfinite(low))
    assert np.all(low <= found)


def test_killed_ibp_run_resumes_exactly(ibp_run, tmp_path):
    run_dir, model, summary = ibp_run

    def kill_at_step_10(record):
        if record["kind"] == "train" and record["step"] == 10:
            raise Killed

    with pytest.raises(Killed):
        train(RUN, tmp_path, progress=kill_at_step_10, **_data())
    resumed, resumed_summary = train(RUN, tmp_path, **_data())
    assert resumed_summary["resumed_from_step"] == 9
    assert_trees_equal(nnx.state(resumed), nnx.state(model))
    assert resumed_summary["final"] == summary["final"]


# --- Refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(robust_training="ibpp"), "robust_training"),
        (dict(robust_eps=2.0), r"robust_eps.*did you mean 2/255"),
        (dict(robust_eps=-0.1), "robust_eps"),
        (dict(robust_training="none", robust_eps=0.01), "robust_eps.*ignored"),
        (dict(robust_kappa_start=1.5), "robust_kappa_start"),
        (dict(robust_kappa_end=-0.1), "robust_kappa_end"),
        (dict(robust_warmup_epochs=3.0), "robust_warmup_epochs"),
        (dict(robust_warmup_epochs=1.0, robust_ramp_epochs=1.5), "robust_ramp_epochs"),
        (dict(pgd_steps=0), "pgd_steps"),
        (dict(pgd_step_size=0.0), "pgd_step_size"),
        (dict(robust_training="pgd", noise_sigma=0.1), "noise_sigma"),
        (dict(robust_training="ibp", model=MODEL.replace(scan_layers=True)), "scan_layers"),
        (dict(robust_training="crown-ibp", model=MODEL.replace(remat=True)), "remat"),
    ],
)
def test_bad_values_are_refused_by_name(changes, match):
    with pytest.raises(ValueError, match=match):
        BASE.replace(**changes)


def test_a_model_the_verifier_refuses_is_refused_before_training(tmp_path):
    config = BASE.replace(robust_training="ibp", robust_eps=EPS,
                          model=MODEL.replace(dtype="bfloat16"))  # fmt: skip
    with pytest.raises(ValueError, match="diffjax.verify cannot bound primitive"):
        train(config, tmp_path, **_data())
    assert not any(tmp_path.iterdir())  # nothing written, no step taken


def test_the_fields_serialise_only_when_set():
    assert "robust_training" not in BASE.to_dict()
    config = BASE.replace(robust_training="crown-ibp", robust_eps=0.01)
    d = config.to_dict()
    assert d["robust_training"] == "crown-ibp" and d["robust_eps"] == 0.01
    assert TrainConfig.from_dict(d) == config
