"""diffjax.verify on whole float64 ViTs and DiffViTs: the certified margin lower bounds are never
above what a projected-gradient adversary reaches in B(x, ε) ∩ [0, 1]^d, equal the model's own
margins at ε = 0 (which checks that the traced program is the model's function), and are ordered
IBP ≤ CROWN-IBP, CROWN ≤ alpha-CROWN."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import verify
from diffjax.analysis import with_dtype
from tests.analysis_models import tiny

EPS = {"linf": 2e-3, "l2": 1e-2}
# The bounds at ε = 0 sit below the margins by the rounding slack (docs/verify.md), 1e-12
# relative per step times the magnitudes of the backward pass's terms.
SLACK = 1e-4


@functools.cache
def _batch(attention):
    with jax.enable_x64():
        model = tiny(attention, depth=1)
        x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), jnp.float64)
        logits = model(x)
        labels = jnp.argmax(logits, -1)
        margins = logits[jnp.arange(2), labels][:, None] - logits
        return model, x, labels, np.asarray(margins)


def _adversary(model, x, labels, eps, norm, steps=60, restarts=6):
    """min over found points of z_c − z_j, per example and j ([B, K]): projected gradient
    descent on each margin from the centre and random starts in the ball ∩ box."""

    def margin(z, c, j):
        out = model(z[None])[0]
        return out[c] - out[j]

    def project(z, x0):
        d = z - x0
        if norm == "linf":
            d = jnp.clip(d, -eps, eps)
        else:
            d = d * jnp.minimum(1.0, eps / (jnp.linalg.norm(d) + 1e-30))
        return jnp.clip(x0 + d, 0.0, 1.0)

    def attack(x0, c, j, key):
        z = project(x0 + jax.random.uniform(key, x0.shape, minval=-eps, maxval=eps), x0)
        best = margin(z, c, j)

        def step(carry, i):
            z, best = carry
            g = jax.grad(margin)(z, c, j)
            size = eps * 0.5 * (1 - i / steps) + eps * 0.02
            move = jnp.sign(g) if norm == "linf" else g / (jnp.linalg.norm(g) + 1e-30)
            z = project(z - size * move, x0)
            return (z, jnp.minimum(best, margin(z, c, j))), None

        (_, best), _ = jax.lax.scan(step, (z, best), jnp.arange(steps))
        return best

    classes = model.config.num_classes
    keys = jax.random.split(jax.random.key(7), restarts)
    per_j = jax.vmap(lambda x0, c, j: jnp.min(jax.vmap(lambda k: attack(x0, c, j, k))(keys)),
                     in_axes=(None, None, 0))  # fmt: skip
    found = jax.jit(jax.vmap(lambda x0, c: per_j(x0, c, jnp.arange(classes))))(x, labels)
    return np.asarray(found)


@functools.cache
def _found(attention, norm):
    model, x, labels, _ = _batch(attention)
    with jax.enable_x64():
        return _adversary(model, x, labels, EPS[norm], norm)


@functools.cache
def _bounds(attention, method, norm, intermediate="checkpoint"):
    model, x, labels, _ = _batch(attention)
    with jax.enable_x64():
        at0, at_eps = (verify.margin_lower_bounds(model, x, labels, e, norm, method,
                                                  alpha_steps=8, intermediate=intermediate)
                       for e in (0.0, EPS[norm]))  # fmt: skip
    return np.asarray(at0), np.asarray(at_eps)


# Each method against the adversary, both attentions and both norms: an attention's relaxations
# are the same whatever the norm (the norm enters at the input set only), so IBP and CROWN each
# run on softmax under ℓ∞ and on DA under ℓ2.
CASES = [
    ("softmax", "ibp", "linf"),
    ("diff", "ibp", "l2"),
    ("softmax", "crown-ibp", "linf"),
    ("softmax", "crown", "linf"),
    ("diff", "crown", "l2"),
    ("softmax", "alpha-crown", "linf"),
]


@pytest.mark.parametrize("attention, method, norm", CASES)
def test_bounds_are_sound_and_exact_at_a_point(attention, method, norm):
    _, _, labels, margins = _batch(attention)
    at0, at_eps = _bounds(attention, method, norm)
    found = _found(attention, norm)
    off = np.ones_like(margins, bool)
    off[np.arange(len(labels)), np.asarray(labels)] = False
    # Sound: below every margin the adversary reaches (and below the margins at x itself).
    assert np.all(at_eps[off] <= found[off]), (at_eps - found)[off].max()
    assert np.all(at0[off] <= margins[off])
    # The r = 0 collapse: the traced program is the model's function.
    if method != "ibp":
        np.testing.assert_allclose(at0, margins, atol=SLACK, rtol=0)
    else:
        np.testing.assert_allclose(at0, margins, atol=1e-3, rtol=0)
    assert np.all(at0[~off] == 0) and np.all(at_eps[~off] == 0)


def test_full_intermediate_passes_are_sound_and_at_least_as_tight():
    """CROWN with every intermediate pass back to the input: below the adversary, exact at a
    point, and not looser than with the checkpoints substituted. With the same planes a full
    pass is at least as tight (substituting a checkpoint bounds its neurons one by one); its
    intermediate bounds are tighter, which changes CROWN's planes, so "not looser" is checked
    on this model, not implied."""
    _, _, labels, margins = _batch("diff")
    at0, full = _bounds("diff", "crown", "l2", "full")
    _, checkpoint = _bounds("diff", "crown", "l2")
    off = np.ones_like(margins, bool)
    off[np.arange(len(labels)), np.asarray(labels)] = False
    assert np.all(full[off] <= _found("diff", "l2")[off])
    np.testing.assert_allclose(at0, margins, atol=SLACK, rtol=0)
    assert np.all(full >= checkpoint - SLACK)
    assert np.sum(full - checkpoint) > 1e-6  # the substitution costs tightness here


def test_tighter_methods_are_tighter():
    _, ibp = _bounds("softmax", "ibp", "linf")
    _, crown_ibp = _bounds("softmax", "crown-ibp", "linf")
    _, crown = _bounds("softmax", "crown", "linf")
    _, alpha = _bounds("softmax", "alpha-crown", "linf")
    assert np.all(crown_ibp >= ibp) and np.all(crown >= ibp)
    assert np.all(alpha >= crown)
    assert np.sum(alpha - crown) > 1e-6  # the optimisation moves the bound
    _, ibp_diff = _bounds("diff", "ibp", "l2")
    _, crown_diff = _bounds("diff", "crown", "l2")
    assert np.all(crown_diff >= ibp_diff)


def test_certified_radius_is_certified_and_zero_when_misclassified():
    model, x, labels, margins = _batch("softmax")
    with jax.enable_x64():
        wrong = (labels + 1) % model.config.num_classes
        both = jnp.concatenate([labels, wrong])
        radii = verify.certified_radius(model, jnp.concatenate([x, x]), both, "linf", "crown",
                                        hi=0.05, steps=6)  # fmt: skip
        radii = np.asarray(radii)
        assert np.all(radii[2:] == 0) and np.all(radii[:2] > 0)
        lb = verify.margin_lower_bounds(model, x, labels, jnp.asarray(radii[:2]), "linf", "crown")
        lb = np.array(lb)  # a writable copy
        lb[np.arange(2), np.asarray(labels)] = 1.0
        assert np.all(lb > 0)


def test_float32_path_is_close_at_a_point_and_below_the_adversary():
    model, x, labels, margins = _batch("softmax")
    found = _found("softmax", "linf")
    with jax.enable_x64():
        at0 = verify.margin_lower_bounds(model, x, labels, 0.0, method="crown-ibp",
                                         precision="float32")  # fmt: skip
        at_eps = verify.margin_lower_bounds(model, x, labels, EPS["linf"], method="crown-ibp",
                                            precision="float32")  # fmt: skip
    np.testing.assert_allclose(np.asarray(at0), margins, atol=1e-4)
    assert np.all(np.asarray(at_eps) <= found + 1e-6)


def test_bisect_traces_its_certificate_once_and_reaches_the_grid_point_below_each_threshold():
    hi, steps = 0.05, 9
    h = hi / 2**steps
    t = np.array([0.0, 7 * h, 0.0123, 0.0371, hi, 2 * hi, -1.0])
    calls = []

    def radius(threshold):
        def certified(eps):
            calls.append(eps)
            return eps <= threshold

        return verify.bisect(certified, jnp.asarray(hi), steps)

    with jax.enable_x64():
        r = np.asarray(jax.jit(jax.vmap(radius))(jnp.asarray(t)))
    # One call site: one copy of the certificate's program for XLA to compile.
    assert len(calls) == 1
    # In closed form: the largest multiple of h that is ≤ t below hi; hi where t ≥ hi; 0 where
    # not even ε = 0 is certified.
    expected = np.where(t < 0, 0.0, np.where(t >= hi, hi, np.floor(t / h) * h))
    np.testing.assert_allclose(r, expected, rtol=1e-12, atol=0)


def test_compiled_programs_are_cached_per_parameters_and_the_options_they_read(monkeypatch):
    built = []

    def build(model, kind, **options):
        built.append((kind, options["method"], options["alpha_steps"]))
        return lambda images, *_: jnp.zeros(images.shape[0])

    monkeypatch.setattr(verify, "_build", build)
    with jax.enable_x64():
        model = with_dtype(dj.ViT(dj.preset("tiny", depth=1), rngs=nnx.Rngs(0)), "float64")
        x, y = jnp.zeros((1, 8, 8, 3)), jnp.zeros(1, int)
        for steps in (8, 20):  # CROWN reads no alpha options: one program
            verify.margin_lower_bounds(model, x, y, 0.0, method="crown", alpha_steps=steps)
        verify.certified_radius(model, x, y, method="crown")
        verify.margin_lower_bounds(model, x, y, 0.0, method="crown")  # still cached
        for steps in (8, 20):  # alpha-CROWN does: two
            verify.margin_lower_bounds(model, x, y, 0.0, method="alpha-crown", alpha_steps=steps)
        assert built == [("margins", "crown", 8), ("radius", "crown", 20),
                         ("margins", "alpha-crown", 8), ("margins", "alpha-crown", 20)]  # fmt: skip
        head = model.head
        head.kernel[...] = head.kernel[...] + 1.0  # new parameters: rebuilt, the old ones dropped
        verify.margin_lower_bounds(model, x, y, 0.0, method="crown")
        assert built[4:] == [("margins", "crown", 20)] and len(verify._CACHE[model]) == 1
