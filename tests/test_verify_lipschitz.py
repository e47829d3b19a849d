"""diffjax.verify's certified Lipschitz bounds (bound propagation through the model's JVP): at
ε = 0 they equal the exact norm of the Jacobian (jax.jacfwd, NumPy norms) up to rounding, and
over a ball they are never below what a projected-gradient adversary (optax Adam, restarts)
reaches on the norm of jax.jacfwd's matrix; the product input set's minimum is the closed form
of each part."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analysis as an
from diffjax import verify
from diffjax.verify import engine
from tests.analysis_models import tiny

# At ε = 0 the bound is the exact norm plus the rounding slack of a few hundred relaxation
# steps (docs/verify.md).
RTOL = 1e-6
EPS = {"linf": 2e-3, "l2": 1e-2}


@functools.cache
def _layer(attention):
    """A depth-1 width-8 model and its attention input u0 = LN1(h_0) [1, 5, 8] for one image
    (40 inputs: the ℓ2 bound takes one pass per column)."""
    with jax.enable_x64():
        model = tiny(attention, depth=1, width=8)
        image = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3), jnp.float64)
        return model, an.layer_input(model, image, 0, "attention_input")


def _operator_norm(jac, norm):
    return jnp.linalg.norm(jac, 2) if norm == "l2" else jnp.max(jnp.sum(jnp.abs(jac), 1))


@pytest.mark.parametrize("attention, norm", [("softmax", "l2"), ("diff", "linf")])
def test_attention_bound_is_exact_at_a_point_and_sound(attention, norm):
    model, u = _layer(attention)
    with jax.enable_x64():

        def lipschitz(v):
            jac = jax.jacfwd(lambda w: an.attention_layer(model, w, 0))(v)
            return _operator_norm(jac.reshape(v.size, v.size), norm)

        exact = float(lipschitz(u[0]))
        both = jnp.concatenate([u, u])
        bound = np.asarray(verify.attention_lipschitz_bound(model, 0, both,
                                                            jnp.asarray([0.0, EPS[norm]]),
                                                            norm, "crown-ibp"))  # fmt: skip
        found = float(verify.lipschitz.adversarial_max(lipschitz, u[0], EPS[norm], norm, False,
                                                       jax.random.key(3)))  # fmt: skip
    assert exact <= bound[0] <= exact * (1 + RTOL)
    assert found > exact  # the adversary moves
    assert bound[1] >= found, (bound[1], found)


def test_product_set_minimum_is_the_sum_of_the_parts():
    """min over B_∞(x0, ε) ∩ [0, 1]^d × B_2(0, 1) of a·x + b·v = Σ min(a·lo, a·hi) − ‖b‖₂."""
    rng = np.random.default_rng(0)
    with jax.enable_x64():
        x0 = jnp.asarray(rng.uniform(0, 1, (3, 4)))
        a = jnp.asarray(rng.normal(size=(5, 2, 3, 4)))
        unit = engine.input_set(jnp.zeros_like(x0), 1.0, "l2", box=False)
        s = engine.ProductSet((engine.input_set(x0, 0.1, "linf"), unit))
        low = engine.concretize((a, jnp.abs(a), jnp.zeros(5), jnp.zeros(5)), s, 0.0)
    lo, hi = np.clip(np.asarray(x0) - 0.1, 0, 1), np.clip(np.asarray(x0) + 0.1, 0, 1)
    a = np.asarray(a)
    want = np.minimum(a[:, 0] * lo, a[:, 0] * hi).sum((1, 2))
    want -= np.linalg.norm(a[:, 1].reshape(5, -1), axis=1)
    # Below the closed form by the rounding slack of the box's ends (DELTA = 2⁻⁴⁰ relative).
    assert np.all(np.asarray(low) <= want)
    np.testing.assert_allclose(np.asarray(low), want, rtol=1e-10)


def test_bad_arguments_are_refused():
    model, u = _layer("softmax")
    with jax.enable_x64():
        with pytest.raises(ValueError, match="layer must be"):
            verify.attention_lipschitz_bound(model, 1, u, 0.0)
        with pytest.raises(ValueError, match="inputs must be"):
            verify.attention_lipschitz_bound(model, 0, u[0], 0.0)
        with pytest.raises(ValueError, match="eps must be"):
            verify.attention_lipschitz_bound(model, 0, u, -1.0)
        with pytest.raises(ValueError, match="method"):
            verify.attention_lipschitz_bound(model, 0, u, 0.0, method="alpha-crown")


def test_margin_gradient_bound_is_sound():
    """The whole network (depth 1, 4×4 images): ‖∇(z_c − z_j)‖₁ over the ℓ∞ ball ∩ [0, 1]^d,
    by IBP (CROWN-IBP and CROWN compile for minutes on the whole network's JVP; IBP is loose,
    so only soundness is checked here: at ε = 0 against the exact norm, over the ball against
    the adversary, where IBP's bound may already be +∞)."""
    with jax.enable_x64():
        model = tiny("diff", depth=1, image_size=4, patch_size=2, width=8, num_classes=3)
        x = jax.random.uniform(jax.random.key(2), (1, 4, 4, 3), jnp.float64)
        label = int(jnp.argmax(model(x)[0]))

        def gradient_norm(z, j):
            return jnp.sum(jnp.abs(jax.grad(lambda y: (lambda o: o[label] - o[j])(
                model(y[None])[0]))(z)))  # fmt: skip

        others = [j for j in range(3) if j != label]
        exact = np.asarray([gradient_norm(x[0], j) for j in others])
        eps = jnp.asarray([0.0, EPS["linf"]])
        bound = verify.margin_gradient_bounds(model, jnp.concatenate([x, x]),
                                              jnp.asarray([label, label]), eps, "linf",
                                              "ibp")  # fmt: skip
        bound = np.asarray(bound)[:, others]
        adversary = verify.lipschitz.adversarial_max
        found = [float(adversary(lambda z, j=j: gradient_norm(z, j), x[0], EPS["linf"], "linf",
                                 True, jax.random.key(4))) for j in others]  # fmt: skip
    assert np.all(exact <= bound[0]) and np.all(np.isfinite(bound[0])), (bound[0], exact)
    assert np.all(bound[1] >= np.asarray(found)), (bound[1], found)
