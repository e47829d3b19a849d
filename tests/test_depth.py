"""Noise cancellation α, per-layer Lipschitz constants and amplification through depth."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analysis as an
from tests.analysis_models import tied_branches, tiny


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_depth_profile_is_consistent_with_its_bounds():
    model = tiny("diff")
    images = jax.random.uniform(jax.random.key(8), (2, 8, 8, 3), jnp.float64)
    keys = jax.random.split(jax.random.key(9), 2)
    profile = functools.partial(an.depth_profile, radius=1e-6, with_alpha_frobenius=True)
    p = jax.jit(jax.vmap(lambda m, x, k: profile(m, x, key=k), (None, 0, 0)))(model, images, keys)
    np.testing.assert_allclose(p.amplification, np.cumprod(p.gain, axis=1), rtol=1e-12)
    # Linearised and finite (r = 1e-6) amplification agree; the finite one re-runs the stack.
    np.testing.assert_allclose(p.amplification_finite, p.amplification, rtol=1e-5)
    # Any direction ≤ the worst direction ≤ the product of per-layer worst cases.
    assert np.all(p.amplification <= p.stack_lipschitz * (1 + 1e-10))
    assert np.all(p.stack_lipschitz <= p.product_bound * (1 + 1e-10))
    np.testing.assert_allclose(p.stack_lipschitz[:, 0], p.lipschitz[:, 0], rtol=1e-10)
    np.testing.assert_allclose(p.product_bound, np.cumprod(p.lipschitz, axis=1), rtol=1e-12)
    depth = np.arange(1, 3)
    want = (np.cumsum(p.alpha, 1) / depth * np.cumsum(p.lipschitz, 1) / depth) ** depth
    np.testing.assert_allclose(p.paper_bound, want, rtol=1e-12)
    assert np.all((p.alpha > 0) & (p.alpha <= 1)) and np.all(p.alpha_frobenius <= 1)

    # α_F = √(1 + λ²ρ² − 2λρ cos θ)/(1 + λρ) from the explicit block-input Jacobians.
    h = an.layer_input(model, images, 1, "block_input")
    jac = an.branch_jacobians(model, h, 1, wrt="block_input")
    n = lambda j: np.linalg.norm(np.asarray(j).reshape(2, -1), axis=1)  # noqa: E731
    lam = np.asarray(jac.lam)
    want = n(jac.combined) / (n(jac.first) + lam * n(jac.second))
    np.testing.assert_allclose(p.alpha_frobenius[:, 1], want, rtol=1e-10)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cancellation_of_constructed_branches(sign):
    model = tied_branches(sign)
    image = jax.random.uniform(jax.random.key(10), (4, 4, 3), jnp.float64)
    p = jax.jit(lambda m, x: an.depth_profile(m, x, key=jax.random.key(11)))(model, image)
    lam = float(an.attention_maps(model, image, 0, "image").lam)
    # Identical branches: a perturbation common to both is scaled by (1 − λ)/(1 + λ).
    # Opposite branches (δA2 = −δA1): nothing cancels, α = 1.
    want = (1 - lam) / (1 + lam) if sign > 0 else 1.0
    np.testing.assert_allclose(p.alpha, [want], rtol=1e-10)


def test_softmax_layers_have_no_alpha_and_alpha_counts_as_one():
    alpha = jnp.asarray([jnp.nan, 0.5])
    lip = jnp.asarray([2.0, 4.0])
    np.testing.assert_allclose(an.paper_bound(alpha, lip), [2.0, (0.75 * 3.0) ** 2])
    t = jnp.asarray([1.0, 0.0])
    assert float(an.cancellation(t, -t, t + 0.5 * t, 0.5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="radius"):
        an.depth_profile(tiny("softmax"), jnp.zeros((8, 8, 3)), key=jax.random.key(0), radius=0)
