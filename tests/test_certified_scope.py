"""The interval certifier's scope, and what its enclosures are at r = 0 (float64, tiny models).

Every ViTConfig field, at a non-default value, is either propagated exactly (at r = 0 the value
box holds the model's own logits and the Jacobian mid is jax.jacobian's; at r > 0 the boxes hold
the logits, Jacobians and σmax at random, boundary and PGD-adversarial points of the ball) or
refused with an error naming the field. A field added to ViTConfig without a row here fails.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import analysis as an
from diffjax.analysis import certified as C
from tests.analysis_models import randomise_batch_norms, tiny

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# The base of the scope test: a one-block float64 model (the certifier's own setting).
BASE = dict(depth=1, dtype="float64")
# Non-default settings, each "exact" (propagated: checked against the model) or "refused"
# (naming its field). Switches that share no rule share a model: one compilation each.
CASES = [
    # Sizes, statistics, no biases and the training-only switches.
    (
        dict(
            image_size=12,
            patch_size=6,
            channels=1,
            mean=(0.5,),
            std=(0.25,),
            num_classes=3,
            width=8,
            num_heads=2,
            mlp_ratio=1.5,
            layer_norm_eps=1e-2,
            qkv_bias=False,
            patch_bias=False,
            dropout=0.1,
            remat=True,
        ),
        "exact",
    ),
    (
        dict(attention="diff", depth=2, diff_layers=(1,), lambda_init="schedule", qkv_bias=False),
        "exact",
    ),
    (dict(norm="batchnorm", ln_pre=True, pool="mean"), "exact"),
    (dict(distillation=True, activation="relu"), "exact"),
    (dict(dtype="float32"), "refused"),
    # float64 needs the reference path: a fused one is a float32 model (dtype is named first).
    (dict(dtype="float32", attention_impl="fused_xla"), "refused"),
    (dict(scan_layers=True), "refused"),
    (dict(activation="quick_gelu"), "refused"),
    (dict(activation="gelu_tanh"), "refused"),
    (dict(activation="silu", mlp_gate=True), "refused"),
    (dict(pool="map", class_token=False), "refused"),
    (dict(num_registers=1, pos_embed_prefix=False), "refused"),
    (dict(layer_scale=True), "refused"),
    (dict(qk_norm=True, proj_bias=False), "refused"),
    (dict(num_classes=0), "refused"),
    (dict(rope_base=100.0, rope_ref_grid=4, mlp_norm=True), "refused"),
]
PARAMS = [pytest.param(changes, outcome, id="-".join(changes)) for changes, outcome in CASES]


def test_every_config_field_has_a_case():
    fields = {f.name for f in dataclasses.fields(dj.ViTConfig)}
    covered = {name for changes, _ in CASES for name in changes}
    assert not fields - covered, (
        f"new ViTConfig fields {sorted(fields - covered)}: add a non-default value of each to "
        "CASES (the certifier refuses them until diffjax.analysis.certified.SCOPE lists them)"
    )


def _model(changes, seed=5):
    """The BASE model with ``changes``: float64 parameters, BatchNorms far from identity."""
    config = dj.preset("tiny", **{**BASE, **changes})
    return randomise_batch_norms(dj.ViT(config, rngs=nnx.Rngs(seed)), seed)


def _check_exact(model):
    c = model.config
    x0 = jax.random.uniform(jax.random.key(3), (c.image_size, c.image_size, c.channels))
    program = C.logits_program(model)
    if c.remat:
        # remat changes what the backward pass stores, not the function, and nnx.remat does not
        # run under the plain JAX transforms below: they evaluate the remat-free twin.
        twin = nnx.eval_shape(lambda: dj.ViT(c.replace(remat=False), rngs=nnx.Rngs(0)))
        nnx.update(twin, nnx.state(model))
        model = twin
    f = jax.jit(lambda x: model(x))
    bounds = jax.jit(lambda r: C.jacobian_bounds(program, C.Ball(x0, r, "l2"), chunk=256))

    @jax.jit
    def at(xs):  # the logits, Jacobians and σmax at the points xs [P, H, W, C]
        jac = jax.vmap(lambda x: an.jacobian_matrix(f, x))(xs)
        return f(xs), jac, jnp.linalg.svd(jac, compute_uv=False)[:, 0]

    # r = 0: the model's own output inside the value box, the Jacobian mid jax.jacobian's.
    at0 = bounds(0.0)
    y0, j0, _ = (np.asarray(a[0]) for a in at(x0[None]))
    assert np.all(np.abs(y0 - at0.value.mid) <= at0.value.rad)
    np.testing.assert_allclose(at0.jacobian.mid, j0, rtol=0, atol=1e-12 * np.abs(j0).max())
    # r > 0: the boxes and L̂ hold at the center, at random interior and boundary points, and at
    # the point where PGD (Lanczos inside) found the largest σmax.
    r = 0.02
    box = bounds(r)
    lhat = float(C.lipschitz_upper(box.jacobian))
    found, x_adv = jax.jit(lambda x: C.max_sigma_pgd(f, x, r, "l2", steps=4, key=jax.random.key(4),
                                                     max_iters=30))(x0)  # fmt: skip
    d = jax.random.normal(jax.random.key(6), (4, *x0.shape), jnp.float64)
    d = d / jnp.linalg.norm(d.reshape(4, -1), axis=1)[:, None, None, None]
    scale = jnp.array([1.0, 1.0, 0.5, 0.1])[:, None, None, None]  # two on the sphere
    xs = jnp.concatenate([x0[None], x_adv[None], x0 + r * scale * d])
    assert np.all(np.linalg.norm((xs - x0).reshape(len(xs), -1), axis=1) <= r * (1 + 1e-12))
    y, j, sigma = (np.asarray(a) for a in at(xs))
    assert np.all(np.abs(y - box.value.mid) <= box.value.rad)
    assert np.all(np.abs(j - box.jacobian.mid) <= box.jacobian.rad)
    assert np.all(sigma <= lhat) and float(found) <= lhat
    assert float(sigma[1]) == pytest.approx(float(found), rel=1e-6)  # PGD's point, re-evaluated


@pytest.mark.parametrize(("changes", "outcome"), PARAMS)
def test_each_field_is_propagated_exactly_or_refused(changes, outcome):
    model = _model(changes)
    if outcome == "exact":
        _check_exact(model)
        return
    # The first refused field in the config's order is named (dtype before attention_impl).
    named = next(iter(changes))
    message = re.escape(f"ViTConfig.{named}={changes[named]!r}")
    for refused in (
        lambda: C.logits_program(model),
        lambda: C.attention_program(model, 0),
        lambda: C.certified_radius(model, jnp.zeros((8, 8, 3)), 0, radii=[0.1]),
    ):
        with pytest.raises(ValueError, match=message):
            refused()


def test_a_later_field_is_refused_unless_listed(monkeypatch):
    """What keeps a field added to ViTConfig later out: only SCOPE's fields may differ from
    their defaults."""
    model = _model({})
    C.logits_program(model)
    monkeypatch.delitem(C.SCOPE, "ln_pre")
    C.logits_program(model)  # at its default, an unlisted field is no change
    with pytest.raises(ValueError, match=r"ViTConfig\.ln_pre=True"):
        C.logits_program(_model(dict(ln_pre=True)))


def test_training_mode_batchnorm_and_clip_towers_are_refused():
    model = _model(dict(norm="batchnorm"))
    model.train()
    with pytest.raises(ValueError, match="training mode.*model.eval"):
        C.logits_program(model)
    model.eval()
    C.logits_program(model)
    # A CLIP image tower is a ViT subclass whose head is the bias-free projection.
    from diffjax.clip import clip_preset
    from diffjax.clip.model import ImageTower

    tower = nnx.eval_shape(lambda: ImageTower(clip_preset("tiny"), rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="ImageTower"):
        C.logits_program(tower)


@functools.cache
def _zero_bounds(attention, depth, delta):
    model = tiny(attention, depth=depth)
    program = C.logits_program(model)
    return jax.jit(lambda c: C.jacobian_bounds(program, C.Ball(c, jnp.zeros(()), "l2")))


@pytest.mark.parametrize("attention", ["softmax", "diff"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_at_radius_zero_the_enclosure_is_the_point(attention, depth, monkeypatch):
    """At r = 0 the mids are the float64 logits and jax.jacobian; without the rounding slack
    (DELTA = 0) every radius is float64 rounding and L̂ is σmax(J(x0)) times the SVD's slack."""
    model = tiny(attention, depth=depth)
    x0 = jax.random.uniform(jax.random.key(3), (8, 8, 3), jnp.float64)
    y0 = np.asarray(model(x0))
    j0 = np.asarray(an.jacobian_matrix(lambda x: model(x), x0))
    sigma = np.linalg.svd(j0, compute_uv=False)[0]
    # Without the slack (one depth, both attentions: every rule of the other depths is in it).
    for delta in (C.DELTA, 0.0) if depth == 3 else (C.DELTA,):
        monkeypatch.setattr(C, "DELTA", delta)
        b = _zero_bounds(attention, depth, delta)(x0)
        if delta and depth == 1:  # the rounding slack alone (docs/certified.md)
            assert float(C.lipschitz_upper(b.jacobian)) / sigma - 1 < 1e-5
        np.testing.assert_allclose(b.value.mid, y0, rtol=0, atol=1e-12 * np.abs(y0).max())
        np.testing.assert_allclose(b.jacobian.mid, j0, rtol=0, atol=1e-12 * np.abs(j0).max())
        if delta:  # the slack is what makes the box hold the model's float64 rounding too
            assert np.all(np.abs(y0 - b.value.mid) <= b.value.rad)
    if depth < 3:
        return
    # Exactly 0 in exact arithmetic; XLA may round the bound and the mid formulas differently
    # (fusion), and interval arithmetic amplifies those ulps: to 1e-9 is what the docs state.
    assert np.all(b.value.rad <= 1e-9 * np.abs(y0).max())
    assert np.all(b.jacobian.rad <= 1e-9 * np.abs(j0).max())
    lhat = float(C.lipschitz_upper(b.jacobian))
    assert lhat == pytest.approx(sigma * (1 + C.SPECTRAL_SLACK), rel=1e-9)
