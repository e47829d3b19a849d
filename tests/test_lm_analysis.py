"""The exact branch analysis on causal language models (float64): causality, J_DA = J1 − λJ2,
finite differences, and per-layer summaries with exact σmax."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from diffjax import analysis as an
from diffjax.lm import LM, LMConfig


@pytest.fixture(scope="module")
def lm64():
    with jax.enable_x64():
        config = LMConfig(vocab_size=7, width=8, depth=2, num_heads=2, max_len=8,
                          dtype="float64", rotary_base=20.0)  # fmt: skip
        yield LM(config, rngs=nnx.Rngs(1))


def test_branch_jacobians_are_causal_exact_and_match_differences(lm64):
    with jax.enable_x64():
        tokens = jax.random.randint(jax.random.key(0), (1, 5), 0, 7)
        h0 = an.layer_input(lm64, tokens, 1, "embeddings")
        jac = an.branch_jacobians(lm64, h0, 1, wrt="embeddings")
        j1, j2, jda = (np.asarray(a[0]) for a in (jac.first, jac.second, jac.combined))
        lam = float(jac.lam[0])
        np.testing.assert_allclose(jda, j1 - lam * j2, atol=1e-13)  # Lemma 1, checked
        # [H', R, K, N, D]: no future key has weight, no future token has influence
        for i in range(5):
            assert np.all(j1[:, i, i + 1 :] == 0) and np.all(j1[:, i, :, i + 1 :] == 0)
            assert np.all(j2[:, i, :, i + 1 :] == 0)
        z = h0[0]
        step = 1e-6
        v = jax.random.normal(jax.random.key(1), z.shape, z.dtype)
        f = lambda x: an.attention_maps(lm64, x, 1, "embeddings").combined  # noqa: E731
        fd = (f(z + step * v) - f(z - step * v)) / (2 * step)
        np.testing.assert_allclose(np.einsum("hrknd,nd->hrk", jda, v), fd, atol=1e-8)
        assert np.abs(fd).max() > 1e-4


def test_layer_summary_of_an_lm_reports_alignment_per_position_and_exact_sigma(lm64):
    with jax.enable_x64():
        tokens = jax.random.randint(jax.random.key(2), (2, 5), 0, 7)
        rows = an.layer_summary(lm64, tokens, key=jax.random.key(0), row=None,
                                wrt="embeddings", max_iters=40)  # fmt: skip
        assert [r["kind"] for r in rows] == ["diff", "diff"]
        for layer, r in enumerate(rows):
            cos = np.asarray(r["cos"]).reshape(2, 1, 5)  # [examples, DIFF heads, positions]
            assert np.all(np.isnan(cos[..., 0]))  # row 0 attends only itself: a constant map
            assert np.all(np.isfinite(cos[..., 1:]))
            want = np.mean(cos[..., 1:] < 0)
            assert r["negative_alignment"] == pytest.approx(want)
            # σmax by Lanczos against the full SVD of the attention layer's Jacobian
            u = an.layer_input(lm64, tokens, layer, "attention_input")
            f = functools.partial(an.attention_layer, lm64, layer=layer)
            for b in range(2):
                svd = an.exact_local_lipschitz(f, u[b], method="svd")
                assert r["sigma"][b] == pytest.approx(float(svd.value), rel=1e-8)
