"""Per-branch Jacobians against float64 central finite differences, and their matrix-free forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analysis as an
from tests.analysis_models import tiny

LAYER = 1


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def diffvit():
    return tiny("diff")


@pytest.fixture(scope="module")
def vit():
    return tiny("softmax")


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), jnp.float64)


@functools.partial(jax.jit, static_argnames="wrt")
def central_differences(model, z, wrt, step=1e-5):
    """∂(a1, a2, a1 − λa2)/∂z by central differences of the maps, [3, H, N, N, z.size]."""

    def maps(x):
        m = an.attention_maps(model, x, LAYER, wrt)
        return jnp.stack([m.a1, m.a2, m.a1 - m.lam * m.a2])

    basis = jnp.eye(z.size, dtype=z.dtype).reshape(z.size, *z.shape) * step
    plus, minus = jax.vmap(maps)(z + basis), jax.vmap(maps)(z - basis)
    return jnp.moveaxis((plus - minus) / (2 * step), 0, -1)


@pytest.mark.parametrize("wrt", an.WRT)
def test_jacobians_match_central_differences(diffvit, images, wrt):
    zs = an.layer_input(diffvit, images, LAYER, wrt)
    jac = an.branch_jacobians(diffvit, zs, LAYER, wrt=wrt)
    for b in range(zs.shape[0]):  # the vmapped result, example by example
        fd = np.asarray(central_differences(diffvit, zs[b], wrt))
        for i, j in enumerate((jac.first, jac.second, jac.combined)):
            j = np.asarray(j[b]).reshape(fd.shape[1:])
            scale = np.abs(fd[i]).max()
            assert scale > 1e-4  # the maps do depend on the input
            # through one more block from h_0, the differences' O(step²) error is larger
            tol = 3e-8 if wrt == "embeddings" else 1e-8
            np.testing.assert_allclose(j, fd[i], atol=tol * scale, rtol=0)


def test_forward_and_reverse_jacobians_agree(diffvit, images):
    z = an.layer_input(diffvit, images, LAYER, "attention_input")
    rev = an.branch_jacobians(diffvit, z, LAYER, wrt="attention_input", mode="rev")
    fwd = an.branch_jacobians(diffvit, z, LAYER, wrt="attention_input", mode="fwd")
    for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(fwd), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-14)


def test_softmax_branches_pair_heads(vit, images):
    z = an.layer_input(vit, images, LAYER, "attention_input")
    out = an.branch_outputs(vit, z[0], LAYER, wrt="attention_input")
    a = an.attention_maps(vit, z[0], LAYER, "attention_input").a1
    assert out.combined is None and out.lam is None
    np.testing.assert_array_equal(out.first, a[0::2])
    np.testing.assert_array_equal(out.second, a[1::2])


def test_selection_and_projection_slice_the_full_jacobian(diffvit, images):
    z = an.layer_input(diffvit, images, LAYER, "attention_input")
    full = an.branch_jacobians(diffvit, z, LAYER, wrt="attention_input")
    one = an.branch_jacobians(diffvit, z, LAYER, wrt="attention_input", head=1, row=0)
    np.testing.assert_allclose(one.first, full.first[:, 1:2, 0:1], atol=1e-15)
    np.testing.assert_allclose(one.combined, full.combined[:, 1:2, 0:1], atol=1e-15)
    w = jax.random.normal(jax.random.key(2), (1, 1, 5), jnp.float64)
    proj = an.branch_jacobians(
        diffvit, z, LAYER, wrt="attention_input", head=1, row=0, projection=w
    )
    assert proj.second.shape == (2, 1, 1, 1, 5, 16)
    want = np.einsum("hrk,bhrk...->b...", w, np.asarray(one.second))
    np.testing.assert_allclose(proj.second[:, 0, 0, 0], want, atol=1e-14)


def test_jvp_and_vjp_are_jacobian_products(diffvit, images):
    z = an.layer_input(diffvit, images, LAYER, "block_input")[0]
    jac = an.branch_jacobians(diffvit, z[None], LAYER, wrt="block_input")
    j = [np.asarray(a[0]).reshape(-1, z.size) for a in (jac.first, jac.second, jac.combined)]
    v = jax.random.normal(jax.random.key(3), z.shape, z.dtype)
    c = jax.random.normal(jax.random.key(4), (3, 2, 5, 5), z.dtype)

    @jax.jit
    def products(model, z, v, c):
        _, t = an.branch_jvp(model, z, v, LAYER, wrt="block_input")
        cot = an.Branches(first=c[0], second=c[1], combined=c[2], lam=None)
        return t, an.branch_vjp(model, z, cot, LAYER, wrt="block_input")

    t, g = products(diffvit, z, v, c)
    for ji, ti in zip(j, (t.first, t.second, t.combined), strict=True):
        np.testing.assert_allclose(np.ravel(ti), ji @ np.ravel(v), atol=1e-13)
    want = sum(ji.T @ np.ravel(ci) for ji, ci in zip(j, c, strict=True))
    np.testing.assert_allclose(np.ravel(g), want, atol=1e-13)


@pytest.mark.parametrize("attention", ["diff", "softmax"])
def test_grams_forward_and_reverse_match_explicit_jacobians(diffvit, vit, images, attention):
    model = diffvit if attention == "diff" else vit
    jac = an.branch_jacobians(model, images, LAYER, wrt="image")
    flat = lambda a: np.asarray(a).reshape(*a.shape[:4], -1)  # noqa: E731
    j1, j2 = flat(jac.first), flat(jac.second)
    for mode in ("fwd", "rev") if attention == "diff" else ("rev",):
        # Chunks 50 (of 192 inputs) and 7 (of 50 outputs) leave padded tails that must add nothing.
        g = an.branch_grams(
            model, images, LAYER, wrt="image", mode=mode, chunk=50 if mode == "fwd" else 7
        )
        np.testing.assert_allclose(g.g11, np.sum(j1**2, (-1, -2)), rtol=1e-12)
        np.testing.assert_allclose(g.g22, np.sum(j2**2, (-1, -2)), rtol=1e-12)
        np.testing.assert_allclose(g.g12, np.sum(j1 * j2, (-1, -2)), rtol=1e-10)
        if attention == "diff":
            np.testing.assert_allclose(g.gda, np.sum(flat(jac.combined) ** 2, (-1, -2)), rtol=1e-12)
        else:
            assert np.all(np.isnan(g.gda)) and np.all(np.isnan(g.lam))


def test_bad_arguments_raise(diffvit, images):
    z = images[0]
    with pytest.raises(ValueError, match="wrt"):
        an.branch_outputs(diffvit, z, LAYER, wrt="pixels")
    with pytest.raises(ValueError, match="layer"):
        an.branch_outputs(diffvit, z, 5)
    with pytest.raises(ValueError, match="head"):
        an.branch_outputs(diffvit, z, LAYER, head=2)
    with pytest.raises(ValueError, match="row"):
        an.branch_outputs(diffvit, z, LAYER, row=5)
    with pytest.raises(ValueError, match="projection"):
        an.branch_outputs(diffvit, z, LAYER, projection=jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match="mode"):
        an.branch_grams(diffvit, images, LAYER, mode="sideways")
    with pytest.raises(ValueError, match="even head count"):
        an.branch_outputs(tiny("softmax", num_heads=1, depth=2), z, LAYER)
