"""Local Lipschitz constants: exact (SVD, Lanczos, power), spectra, and empirical estimates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analysis as an
from tests.analysis_models import tiny


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def model():
    return tiny("diff")


@pytest.fixture(scope="module")
def image():
    return jax.random.uniform(jax.random.key(7), (8, 8, 3), jnp.float64)


def fd_jacobian(f, x, step=1e-6):
    basis = jnp.eye(x.size, dtype=x.dtype).reshape(x.size, *x.shape) * step
    d = (jax.vmap(f)(x + basis) - jax.vmap(f)(x - basis)) / (2 * step)
    return d.reshape(x.size, -1).T


@pytest.mark.parametrize("target", ["logits", "attention_layer"])
def test_exact_local_lipschitz_methods_agree_with_numpy(model, image, target):
    if target == "logits":
        fn, x = an.logits, image
    else:
        fn, x = (
            functools.partial(an.attention_layer, layer=1),
            an.layer_input(model, image[None], 1, "attention_input")[0],
        )

    # Power iteration is run on the attention layer only: its σ1/σ2 gap is known to be usable.
    methods = ("svd", "lanczos") if target == "logits" else ("svd", "lanczos", "power")

    @jax.jit
    def compute(model, x):  # the model is an argument: constants would be folded by XLA
        f = functools.partial(fn, model)
        estimates = {
            # Lanczos keeps max_iters basis vectors; power iteration needs more, cheaper steps.
            m: an.exact_local_lipschitz(
                f, x, method=m, key=jax.random.key(1), max_iters=500 if m == "power" else 60
            )
            for m in methods
        }
        if target == "attention_layer":
            estimates["top3"] = an.top_singular_values(f, x, k=3, key=jax.random.key(2))
        return an.jacobian_matrix(f, x), fd_jacobian(f, x), an.jacobian_spectrum(f, x), estimates

    jac, fd, spectrum, estimates = compute(model, x)
    np.testing.assert_allclose(jac, fd, atol=1e-7 * np.abs(jac).max())
    reference = np.linalg.svd(np.asarray(jac), compute_uv=False)  # independent NumPy SVD
    np.testing.assert_allclose(spectrum, reference, atol=1e-12 * reference[0])
    if "top3" in estimates:
        np.testing.assert_allclose(estimates.pop("top3").values, reference[:3], rtol=1e-6)
    for method, e in estimates.items():
        assert e.kind == "exact_local" and e.method == method
        assert float(e.value) == pytest.approx(reference[0], rel=1e-6)
        assert abs(float(e.value) - reference[0]) <= float(e.bound) + 1e-12 * reference[0]


def test_auto_method_switches_on_jacobian_size(model, image):
    f = lambda v: an.logits(model, v)  # noqa: E731  # a 10 × 192 Jacobian

    def method(**kw):
        run = lambda x: an.exact_local_lipschitz(f, x, key=jax.random.key(0), **kw)  # noqa: E731
        return jax.eval_shape(run, image).method

    assert method() == "svd"
    assert method(max_entries=100) == "lanczos"
    with pytest.raises(ValueError, match="PRNG key"):
        jax.eval_shape(lambda x: an.exact_local_lipschitz(f, x, method="lanczos"), image)
    with pytest.raises(ValueError, match="method"):
        jax.eval_shape(lambda x: an.exact_local_lipschitz(f, x, method="guess"), image)


def test_empirical_estimates_bracket_a_linear_map():
    a = jnp.asarray(np.random.default_rng(0).normal(size=(30, 40)))
    sigma = np.linalg.svd(np.asarray(a), compute_uv=False)[0]
    f = lambda x: a @ x  # noqa: E731  # for a linear map every ratio is ≤ σ1, and PGD reaches it
    x = jnp.ones(40)
    sampled = an.sampled_lipschitz(f, x, radius=0.1, num_samples=64, key=jax.random.key(0))
    pgd, xi = jax.jit(
        lambda x: an.pgd_lipschitz(f, x, radius=0.1, steps=50, key=jax.random.key(1))
    )(x)
    assert sampled.kind == "empirical_sampling" and pgd.kind == "empirical_pgd"
    assert float(sampled.value) < float(pgd.value) <= sigma * (1 + 1e-12)
    assert float(pgd.value) == pytest.approx(sigma, rel=1e-5)
    assert float(jnp.linalg.norm(xi)) == pytest.approx(0.1, rel=1e-12)
    assert float(jnp.linalg.norm(a @ xi) / jnp.linalg.norm(xi)) == pytest.approx(float(pgd.value))


def test_empirical_estimates_on_the_model_sit_below_the_exact_value(model, image):
    @jax.jit
    def empirical(model, x):
        f = functools.partial(an.logits, model)
        s = an.sampled_lipschitz(f, x, radius=1e-4, num_samples=32, key=jax.random.key(2))
        p, xi = an.pgd_lipschitz(f, x, radius=1e-4, steps=30, key=jax.random.key(3))
        return an.exact_local_lipschitz(f, x).value, s, p, xi, f(x + xi) - f(x)

    exact, sampled, pgd, xi, change = empirical(model, image)
    # Re-measure outside the estimator: the perturbation and the ratio it claims.
    assert float(jnp.linalg.norm(xi)) <= 1e-4 * (1 + 1e-12)
    ratio = np.linalg.norm(change) / np.linalg.norm(xi)
    assert float(pgd.value) == pytest.approx(float(ratio), rel=1e-9)
    # At a small radius both are directional derivatives up to O(r): below L(x), PGD close to it.
    assert float(sampled.value) < float(pgd.value) <= float(exact) * (1 + 1e-3)
    assert float(pgd.value) > 0.99 * float(exact)
    assert float(empirical(model, image)[1].value) == float(sampled.value)  # reproducible


def test_empirical_estimates_reject_bad_arguments():
    f = lambda x: 2 * x  # noqa: E731
    x, key = jnp.ones(3), jax.random.key(0)
    with pytest.raises(ValueError, match="radius"):
        an.sampled_lipschitz(f, x, radius=0.0, num_samples=4, key=key)
    with pytest.raises(ValueError, match="num_samples"):
        an.sampled_lipschitz(f, x, radius=0.1, num_samples=0, key=key)
    with pytest.raises(ValueError, match="radius"):
        an.pgd_lipschitz(f, x, radius=-1.0, steps=3, key=key)
