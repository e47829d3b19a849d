"""The per-layer summary equals the same numbers computed from materialised Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import analysis as an


def _cls_maps(model, image, layer):
    """The CLS row of both branches, [H', 2, N]; softmax heads paired (2h, 2h+1)."""
    m = an.attention_maps(model, image, layer, "image")
    a1, a2 = (m.a1, m.a2) if m.a2 is not None else (m.a1[0::2], m.a1[1::2])
    return jnp.stack([a1[:, 0], a2[:, 0]], 1)


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_layer_summary_matches_full_jacobians(attention):
    model = dj.ViT(dj.preset("tiny", attention=attention), rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    rows = an.layer_summary(model, x, key=jax.random.key(0), batch_size=2)
    for layer, row in enumerate(rows):
        jac = jax.jit(jax.vmap(jax.jacrev(lambda im, layer=layer: _cls_maps(model, im, layer))))
        j = np.asarray(jac(x), np.float64)  # [B, H', 2, N, 8, 8, 3]
        j = j.reshape(*j.shape[:3], -1)
        n1, n2 = np.linalg.norm(j[:, :, 0], axis=-1), np.linalg.norm(j[:, :, 1], axis=-1)
        cos = np.sum(j[:, :, 0] * j[:, :, 1], -1) / n1 / n2
        u = an.layer_input(model, x, layer, "attention_input")
        full = jax.jit(jax.vmap(lambda v, layer=layer: an.jacobian_matrix(
            lambda w: an.attention_layer(model, w, layer), v)))(u)  # fmt: skip
        sigmas = np.linalg.svd(np.asarray(full, np.float64), compute_uv=False)[:, 0]
        assert row["negative_alignment"] == pytest.approx(np.mean(cos < 0))
        assert row["cos_median"] == pytest.approx(np.median(cos), rel=1e-3, abs=1e-5)
        assert row["sigma_max_mean"] == pytest.approx(np.mean(sigmas), rel=1e-4)
        assert row["sigma_max_max"] == pytest.approx(np.max(sigmas), rel=1e-4)
        assert (row["lambda"] is None) == (attention == "softmax")


def test_layer_lipschitz_brackets_the_exact_constant():
    """Exact σmax = SVD of the materialised Jacobian; both empirical estimates are lower bounds
    (to first order in the radius) and the PGD ascent gets close to σmax."""
    model = dj.ViT(dj.preset("tiny", attention="diff"), rngs=nnx.Rngs(2))
    x = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype(np.float32)
    rows = an.layer_lipschitz(model, x, key=jax.random.key(0), radius=1e-3, samples=16,
                              pgd_steps=30, batch_size=2)  # fmt: skip
    assert [r["layer"] for r in rows] == list(range(model.config.depth))
    for layer, row in enumerate(rows):
        u = an.layer_input(model, x, layer, "attention_input")
        full = jax.vmap(lambda v, layer=layer: an.jacobian_matrix(
            lambda w: an.attention_layer(model, w, layer), v))(u)  # fmt: skip
        sigma = np.linalg.svd(np.asarray(full, np.float64), compute_uv=False)[:, 0]
        exact, sampled, pgd = (np.asarray(row[k]) for k in ("exact", "sampled", "pgd"))
        assert exact.shape == sampled.shape == pgd.shape == (3,)
        np.testing.assert_allclose(exact, sigma, rtol=1e-4)
        assert np.all(sampled <= sigma * 1.01) and np.all(pgd <= sigma * 1.01)
        assert np.all(pgd >= 0.9 * sigma)
        assert np.all(pgd >= sampled * 0.999)
