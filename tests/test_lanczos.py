"""Lanczos and power iteration on known spectra and a ViT-B/16-sized layer (real small layers:
test_lipschitz.py)."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import analysis as an


def known_spectrum(m, n, top, seed):
    """A = U diag(s) Vᵀ with orthonormal U, V and s = top followed by values in [0, 0.5]."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    s = np.concatenate([top, np.sort(rng.uniform(0, 0.5, r - len(top)))[::-1]])
    return (u * s) @ v.T, s


@functools.partial(jax.jit, static_argnames=("method", "k", "max_iters"))
def solve(a, key, method, k=1, max_iters=60):
    n = a.shape[1]
    matvec, rmatvec = (lambda v: a @ v), (lambda u: a.T @ u)
    if method == "power":
        return an.power_iteration(matvec, rmatvec, n, key=key, max_iters=400, dtype=a.dtype)
    return an.lanczos_svd(
        matvec, rmatvec, n, key=key, k=k, max_iters=max_iters, tol=1e-10, dtype=a.dtype
    )


@pytest.mark.parametrize("shape", [(300, 120), (90, 260)])
def test_lanczos_and_power_on_known_spectra(shape):
    with jax.enable_x64(True):
        a, s = known_spectrum(*shape, top=[3.0, 2.0, 1.5], seed=shape[0])
        a = jnp.asarray(a)
        r = solve(a, jax.random.key(0), "lanczos", k=3)
        assert bool(r.converged)
        np.testing.assert_allclose(r.values, s[:3], rtol=1e-12)
        # The stated accuracy holds: each value within its residual bound of a true one.
        assert np.all(np.abs(np.asarray(r.values) - s[:3]) <= np.asarray(r.bounds) + 1e-15)
        assert int(r.products) == 2 * int(r.iterations) + 2 * 3
        np.testing.assert_allclose(np.linalg.norm(r.right, axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(a @ r.right[0], r.values[0] * r.left[0], atol=1e-9)
        p = solve(a, jax.random.key(0), "power")
        assert bool(p.converged)
        assert abs(float(p.values[0]) - 3.0) <= float(p.bounds[0]) + 1e-15
        np.testing.assert_allclose(p.values, 3.0, rtol=1e-6)
        assert float(p.values[0]) <= 3.0 * (1 + 1e-15)  # ‖Av‖ for unit v never exceeds σ1
        assert int(p.iterations) > int(r.iterations)  # power iteration is the slower method


def test_lanczos_respects_max_iters_and_reports_non_convergence():
    with jax.enable_x64(True):
        a, s = known_spectrum(200, 200, top=[1.0, 0.999, 0.998], seed=3)
        r = solve(jnp.asarray(a), jax.random.key(1), "lanczos", max_iters=4)
        assert int(r.iterations) == 4 and not bool(r.converged)
        assert float(r.values[0]) <= s[0] * (1 + 1e-12)  # a Ritz value never exceeds σ1
        assert np.abs(s - float(r.values[0])).min() <= float(r.bounds[0])


def test_matrix_free_sigma_max_of_a_vit_b16_sized_layer():
    """197 tokens × width 768: the Jacobian would be 151296² floats (85 GiB); Lanczos needs MiBs."""
    layer = dj.DiffAttention(768, 12, 0.8, rngs=nnx.Rngs(0))
    params = layer.params()
    u = jax.random.normal(jax.random.key(4), (197, 768), jnp.float32)

    def f(params, x):  # parameters are arguments, not constants XLA would try to fold
        return dj.diff_attention(params, x[None], 12, 0.8)[0]

    def lanczos(params, u):
        g = functools.partial(f, params)
        return an.top_singular_values(g, u, k=1, key=jax.random.key(5), max_iters=4)

    compiled = jax.jit(lanczos).lower(params, u).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 2**30
    r = compiled(params, u)
    sigma, v, w = float(r.values[0]), r.right[0].reshape(u.shape), r.left[0].reshape(u.shape)

    @jax.jit
    def recheck(params, u, v, w, probes):
        """Fresh products, independent of the Lanczos code: Jṽ, Jᵀũ and J on random probes."""
        g = functools.partial(f, params)
        jv = jax.jvp(g, (u,), (v,))[1]
        jtw = jax.vjp(g, u)[1](w)[0]
        gains = jax.vmap(lambda p: jnp.linalg.norm(jax.jvp(g, (u,), (p,))[1]) / jnp.linalg.norm(p))
        return jv, jtw, gains(probes)

    probes = jax.random.normal(jax.random.key(6), (3, *u.shape))
    jv, jtw, gains = recheck(params, u, v, w, probes)
    residual = np.sqrt((np.sum((jv - sigma * w) ** 2) + np.sum((jtw - sigma * v) ** 2)) / 2)
    assert float(r.bounds[0]) == pytest.approx(residual, rel=1e-2, abs=1e-6 * sigma)
    assert int(r.products) == 2 * int(r.iterations) + 2
    # σ̃ is ‖Jṽ‖ for unit ṽ, and the largest gain seen: more than random directions give.
    assert float(jnp.linalg.norm(jv)) == pytest.approx(sigma, rel=1e-4)
    assert np.all(np.asarray(gains) < sigma)


def _svd_operand_ranks(jaxpr):
    """Ranks of every SVD operand in a jaxpr, sub-jaxprs (loops, maps) included."""
    ranks = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "svd":
            ranks.append(eqn.invars[0].aval.ndim)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            ranks += _svd_operand_ranks(sub)
    return ranks


def test_vmapped_small_svds_run_one_matrix_at_a_time():
    """Under (nested) vmap the SVD is still exact, and LAPACK only ever sees single matrices
    (batched LAPACK calls can deadlock XLA:CPU's thread pool; README, "Known issue")."""
    from diffjax.analysis.lanczos import singular_values, svd

    b = np.random.default_rng(0).normal(size=(2, 3, 5, 4))
    s = jax.vmap(jax.vmap(singular_values))(jnp.asarray(b))
    np.testing.assert_allclose(s, np.linalg.svd(b, compute_uv=False), rtol=1e-5)
    u, s, vt = jax.vmap(svd)(jnp.asarray(b[0]))
    np.testing.assert_allclose((u[..., :4] * s[:, None, :]) @ vt, b[0], atol=1e-5)
    jaxpr = jax.make_jaxpr(jax.vmap(jax.vmap(singular_values)))(jnp.asarray(b)).jaxpr
    assert _svd_operand_ranks(jaxpr) and set(_svd_operand_ranks(jaxpr)) == {2}
