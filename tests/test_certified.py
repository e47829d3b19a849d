"""Soundness of the certified Lipschitz bounds and radii (float64, tiny models).

Every test compares the bound against points an adversary would pick: random points in the ball,
points on its boundary, and the σmax-maximising point found by PGD with Lanczos inside. A bound
that any of them beats is a bug.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import analysis as an
from diffjax import attacks
from diffjax.analysis import certified as C
from tests.analysis_models import tiny

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _image(seed=0):
    return jax.random.uniform(jax.random.key(seed), (8, 8, 3), jnp.float64)


@functools.cache
def _bounds_fn(program_key, norm):
    kind, attention, layer, label = program_key
    model = tiny(attention)
    if kind == "attention":
        program = C.attention_program(model, layer)
    else:
        program = C.logits_program(model, label)
    return jax.jit(lambda c, r: C.jacobian_bounds(program, C.Ball(c, r, norm), chunk=32))


def _ball_points(key, center, radius, norm, count):
    """Random points inside, on the boundary (ℓ2 sphere / ℓ∞ cube corners), and the center."""
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (count, *center.shape)
    if norm == "l2":
        d = jax.random.normal(k1, shape, center.dtype)
        d = d / jnp.linalg.norm(d.reshape(count, -1), axis=1).reshape(-1, *[1] * center.ndim)
        inside = d * jax.random.uniform(k2, (count,) + (1,) * center.ndim, center.dtype)
        boundary = d
    else:
        inside = jax.random.uniform(k1, shape, center.dtype, -1, 1)
        boundary = jax.random.rademacher(k3, shape, center.dtype)
    pts = jnp.concatenate([inside, boundary]) * radius + center
    return jnp.concatenate([center[None], pts])


def _evaluate(f, pts):
    """f(x) [P, m], J_f(x) [P, m, n] and σmax(J_f(x)) [P] at every point (one compilation)."""

    @jax.jit
    def at(x):
        jac = an.jacobian_matrix(f, x)
        return f(x).ravel(), jac, jnp.linalg.svd(jac, compute_uv=False)[0]

    return jax.vmap(at)(pts)


def _assert_inside(bounds, y, jac, sigma):
    """f(x) and J_f(x) inside the enclosures, and σmax(J_f(x)) ≤ L̂, at every point."""
    lhat = float(C.lipschitz_upper(bounds.jacobian))
    for got, box in ((y, bounds.value), (jac, bounds.jacobian)):
        err = np.abs(np.asarray(got) - np.asarray(box.mid))
        np.testing.assert_array_less(err, np.broadcast_to(box.rad, err.shape) + 1e-300)
    worst = float(np.max(sigma))
    assert worst <= lhat
    return worst, lhat


@pytest.mark.parametrize(("attention", "norm"), [("softmax", "l2"), ("diff", "linf")])
def test_attention_bound_holds_on_sampled_boundary_and_adversarial_points(attention, norm):
    model = tiny(attention)
    u0 = an.layer_input(model, _image()[None], 1, "attention_input")[0]
    f = functools.partial(an.attention_layer, model, layer=1)
    radius = 0.05 if norm == "l2" else 0.005
    bounds = _bounds_fn(("attention", attention, 1, None), norm)(u0, radius)
    found, x_adv = jax.jit(
        lambda c: C.max_sigma_pgd(f, c, radius, norm, steps=8, key=jax.random.key(2))
    )(u0)
    delta = (x_adv - u0).ravel()
    size = jnp.linalg.norm(delta) if norm == "l2" else jnp.max(jnp.abs(delta))
    assert float(size) <= radius * (1 + 1e-12)
    # The center, random interior and boundary points, and the adversarial point, at once.
    pts = jnp.concatenate([_ball_points(jax.random.key(1), u0, radius, norm, 3), x_adv[None]])
    y, jac, sigma = _evaluate(f, pts)
    _, lhat = _assert_inside(bounds, y, jac, sigma)
    # The ascent is a real adversary: it beats the center, and still stays below the bound.
    assert float(sigma[0]) <= float(found) <= lhat
    assert float(sigma[-1]) == pytest.approx(float(found), rel=1e-6)


@pytest.mark.parametrize(("attention", "norm"), [("softmax", "linf"), ("diff", "l2")])
def test_logit_and_margin_bounds_hold_over_the_ball(attention, norm):
    model = tiny(attention)
    image = _image(3)
    radius = 1e-3 if norm == "l2" else 1e-4
    f = functools.partial(an.logits, model)
    label = int(jnp.argmax(f(image)))
    bounds_at = _bounds_fn(("logits", attention, None, None), norm)
    # Radius 0: the enclosure shrinks to the exact Jacobian; only the rounding slack remains,
    # amplified by interval arithmetic through two steep-softmax blocks (about 10⁹·DELTA here:
    # the q/k weights are scaled ×8), and L̂ is σmax(J(x0)) to that accuracy.
    pts = _ball_points(jax.random.key(4), image, radius, norm, 3)  # pts[0] is the center
    y, jac, sigma = _evaluate(f, pts)
    zero = bounds_at(image, 0.0)
    exact = np.asarray(jac[0])
    np.testing.assert_array_less(np.abs(exact - zero.jacobian.mid), zero.jacobian.rad)
    assert float(jnp.max(zero.jacobian.rad)) < 1e-2 * float(np.max(np.abs(exact)))
    sigma0 = float(sigma[0])
    assert sigma0 <= float(C.lipschitz_upper(zero.jacobian)) <= sigma0 * (1 + 2e-2)
    bounds = bounds_at(image, radius)
    _, lhat = _assert_inside(bounds, y, jac, sigma)
    assert lhat >= float(C.lipschitz_upper(zero.jacobian))
    # The margins g = z_c − z, by linearity from the same evaluations: g(x) = y_c − y and
    # J_g = J_c − J (exact in float64 up to one rounding per entry, far inside DELTA).
    margins = _bounds_fn(("logits", attention, None, label), norm)(image, radius)
    y = np.asarray(y)
    jac = np.asarray(jac)
    y_g, jac_g = y[:, label, None] - y, jac[:, label, None] - jac
    _assert_inside(margins, y_g, jac_g, np.linalg.svd(jac_g, compute_uv=False)[:, 0])


def test_linear_model_bound_is_the_spectral_norm_exactly():
    w = jax.random.normal(jax.random.key(0), (12, 5), jnp.float64)
    b = jax.random.normal(jax.random.key(1), (5,), jnp.float64)
    x0 = jax.random.normal(jax.random.key(2), (3, 12), jnp.float64)

    def program(ball, t):
        return C.ball_affine(ball, ball.center, t, w, b)

    for norm in ("l2", "linf"):
        # One compilation per norm, the radius an argument.
        bounds_at = jax.jit(
            lambda r, norm=norm: C.jacobian_bounds(program, C.Ball(x0, r, norm), chunk=7)
        )
        for radius in (0.0, 0.3, 10.0):
            C.make_ball(x0, radius, norm)  # a valid ball
            bounds = bounds_at(jnp.float64(radius))
            # f(x) = x @ w row by row: J = I_3 ⊗ wᵀ, so ‖J‖₂ = ‖w‖₂.
            lhat = float(C.lipschitz_upper(bounds.jacobian))
            assert lhat == pytest.approx(float(np.linalg.norm(np.asarray(w), 2)), rel=1e-7)
            assert lhat >= float(np.linalg.norm(np.asarray(w), 2))
            # The value enclosure is exact for one row: r·‖w_k‖_q.
            q = 2 if norm == "l2" else 1
            want = radius * np.linalg.norm(np.asarray(w), q, axis=0)
            np.testing.assert_allclose(bounds.value.rad.reshape(3, 5)[0], want, rtol=1e-9,
                                       atol=1e-10)  # fmt: skip


@functools.cache
def _smooth_model(attention, dtype="float64"):
    """A depth-1 tiny model at init scale: certified radii well above rounding."""
    model = dj.ViT(dj.preset("tiny", attention=attention, depth=1), rngs=nnx.Rngs(5))
    return an.with_dtype(model, dtype)


@functools.cache
def _attack_fn(attention):
    """One model function per model, so that both attacks of a test share one compilation."""
    return attacks.model_function(_smooth_model(attention, "float32"))


def _attack(attention, images, labels, eps):
    """PGD-ℓ2 (margin loss, 2 restarts) on the float32 model; the points are re-checked in
    float64 by the caller. The attack code runs in float32 (outside x64 mode)."""
    with jax.enable_x64(False):
        fn = _attack_fn(attention)
        cfg = attacks.PGDConfig(eps=1.0, norm="l2", steps=40, loss="margin", restarts=2)
        res = attacks.pgd(fn, np.asarray(images, np.float32), np.asarray(labels), jax.random.key(8),
                          cfg, eps=np.asarray(eps, np.float32))  # fmt: skip
        return np.asarray(res.adv_images, np.float64)


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_certified_radius_is_never_beaten_by_pgd(attention):
    model = _smooth_model(attention)
    images = jax.random.uniform(jax.random.key(7), (3, 8, 8, 3), jnp.float64)
    labels = jnp.argmax(model(images), -1)
    radii = np.geomspace(1e-5, 1.0, 6)
    certify = jax.jit(lambda x, y: C.certified_radius(model, x, y, "l2", radii=radii))
    certs = [certify(x, y) for x, y in zip(images, labels, strict=True)]
    r = np.asarray([c.radius for c in certs])
    assert np.all(r > 0), r
    for c in certs:
        assert float(c.radius) == max(float(c.by_interval), float(c.by_gradient))

    def flipped(adv):
        # ℓ2 distance within the budget (float32 attack: shrink by 1e-6), then the float64 label.
        dist = np.linalg.norm((adv - np.asarray(images)).reshape(len(adv), -1), axis=1)
        return np.asarray(jnp.argmax(model(jnp.asarray(adv)), -1)) != np.asarray(labels), dist

    # float32 rounding of the returned images moves them by ~1e-7: attack slightly inside.
    budget = np.maximum(r - 1e-6, 0.0)
    flip, dist = flipped(_attack(attention, images, labels, budget))
    assert np.all(dist <= r)
    assert not np.any(flip)
    # The same attack is not toothless: with a large budget it flips predictions.
    flip_far, _ = flipped(_attack(attention, images, labels, np.full(3, 8.0)))
    assert np.any(flip_far)


def test_bad_inputs_are_named():
    model = tiny("diff")
    u = jnp.zeros((5, 16), jnp.float64)
    with pytest.raises(ValueError, match="norm"):
        C.make_ball(u, 0.1, "l1")
    with pytest.raises(ValueError, match="radius"):
        C.make_ball(u, -0.1, "l2")
    with pytest.raises(ValueError, match="float64"):
        C.make_ball(u.astype(jnp.float32), 0.1, "l2")
    with pytest.raises(ValueError, match="non-finite"):
        C.make_ball(u.at[0, 0].set(jnp.nan), 0.1, "l2")
    with pytest.raises(ValueError, match="layer"):
        C.attention_program(model, 2)
    with pytest.raises(ValueError, match="radii"):
        C.certified_radius(model, _image(), 0, radii=[0.0, 1.0])
    scanned = dj.ViT(dj.preset("tiny", scan_layers=True, dtype="float64"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="per-layer"):
        C.logits_program(scanned)
