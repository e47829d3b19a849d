"""Softmax attention and Differential Attention against float64 NumPy references and invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from tests import reference

B, N, D, H = 2, 7, 32, 4


def _x(seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), (B, N, D), dtype)


def _diff(lambda_init=0.8, seed=1):
    return dj.DiffAttention(D, H, lambda_init, rngs=nnx.Rngs(seed))


def _to64(tree):
    return jax.tree.map(lambda a: None if a is None else jnp.asarray(a, jnp.float64), tree)


@pytest.mark.parametrize("lambda_init", [0.8, dj.lambda_init_schedule(0)])
def test_diff_attention_matches_float32_reference(lambda_init):
    attn = _diff(lambda_init)
    x = _x()
    out, maps = attn(x, return_maps=True)
    ref_out, a1, a2, lam = reference.diff_attention(attn.params(), x, H, lambda_init)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5 * np.abs(ref_out).max())
    np.testing.assert_allclose(maps.a1, a1, atol=1e-6)
    np.testing.assert_allclose(maps.a2, a2, atol=1e-6)
    np.testing.assert_allclose(maps.lam, lam, rtol=1e-6)


def test_softmax_attention_matches_float32_reference():
    attn = dj.SoftmaxAttention(D, H, rngs=nnx.Rngs(2))
    x = _x()
    out, maps = attn(x, return_maps=True)
    ref_out, ref_maps = reference.softmax_attention(attn.params(), x, H)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5 * np.abs(ref_out).max())
    np.testing.assert_allclose(maps.a1, ref_maps, atol=1e-6)


def test_both_attentions_match_reference_to_1e12_in_float64():
    with jax.enable_x64(True):
        x = _x(dtype=jnp.float64)
        mask = jnp.tril(jnp.ones((N, N), bool))
        diff = _diff(0.37)
        out, maps = dj.diff_attention(_to64(diff.params()), x, H, 0.37, mask, return_maps=True)
        ref_out, a1, a2, lam = reference.diff_attention(diff.params(), x, H, 0.37, mask)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(maps.a1, a1, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(maps.a2, a2, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(maps.lam, lam, rtol=1e-14)

        soft = dj.SoftmaxAttention(D, H, rngs=nnx.Rngs(2))
        out = dj.softmax_attention(_to64(soft.params()), x, H, mask)
        ref_out, _ = reference.softmax_attention(soft.params(), x, H, mask)
        np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)


def test_rows_of_differential_map_sum_to_one_minus_lambda():
    attn = _diff(0.55)
    _, maps = attn(_x(), return_maps=True)
    rows = maps.combined.sum(axis=-1)
    np.testing.assert_allclose(rows, np.full(rows.shape, 1.0 - float(maps.lam)), atol=1e-6)


def test_zero_lambda_vectors_give_lambda_init_exactly():
    attn = _diff(0.6)
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        getattr(attn, name)[...] = jnp.zeros_like(getattr(attn, name)[...])
    lam = dj.diff_lambda(attn.params(), attn.lambda_init)
    assert lam == jnp.float32(0.6)  # exp(0) − exp(0) + λ_init has no rounding


def test_lambda_init_schedule_matches_spec_table():
    table = [0.2000, 0.3555, 0.4707, 0.5561, 0.6193, 0.6661, 0.7008, 0.7265, 0.7456, 0.7597,
             0.7701, 0.7779]  # fmt: skip
    got = [dj.lambda_init_schedule(layer) for layer in range(12)]
    np.testing.assert_allclose(got, table, atol=5e-5)
    assert dj.lambda_init_schedule(0) == pytest.approx(0.2, abs=1e-15)
    with pytest.raises(ValueError, match="layer"):
        dj.lambda_init_schedule(-1)


def test_identical_branches_give_degenerate_output():
    """Branch-2 q/k weights = branch-1 ⇒ A1 = A2 ⇒ out = out_proj(RMSNorm(A1·V)·(1−λ_init))."""
    attn = _diff(0.8)
    d = D // H
    for proj in (attn.q, attn.k):
        w = np.array(proj.kernel[...])
        bias = np.array(proj.bias[...])
        for h in range(H // 2):
            w[:, 2 * h * d + d : 2 * h * d + 2 * d] = w[:, 2 * h * d : 2 * h * d + d]
            bias[2 * h * d + d : 2 * h * d + 2 * d] = bias[2 * h * d : 2 * h * d + d]
        proj.kernel[...] = jnp.asarray(w)
        proj.bias[...] = jnp.asarray(bias)
    # Large values make the RMSNorm's eps negligible (relative size eps / mean(o²) ≈ 1e-7).
    attn.v.kernel[...] = attn.v.kernel[...] * 100
    x = _x()
    out, maps = attn(x, return_maps=True)
    np.testing.assert_array_equal(maps.a1, maps.a2)
    assert 1 - float(maps.lam) > 0
    v = reference._dense(np.asarray(x, np.float64), attn.params()["v"])
    heads = []
    for h in range(H // 2):
        o = np.asarray(maps.a1[:, h], np.float64) @ v[..., 2 * h * d : 2 * h * d + 2 * d]
        heads.append(o / np.sqrt(np.mean(o**2, axis=-1, keepdims=True)) * (1 - 0.8))
    expected = reference._dense(np.concatenate(heads, -1), attn.params()["out"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_causal_mask_blocks_the_future():
    attn = _diff(0.8)
    mask = jnp.tril(jnp.ones((N, N), bool))
    x = _x()
    out, maps = attn(x, mask=mask, return_maps=True)
    upper = np.triu(np.ones((N, N), bool), 1)
    assert np.all(np.asarray(maps.a1)[..., upper] == 0) and np.all(
        np.asarray(maps.a2)[..., upper] == 0
    )
    out2 = attn(x.at[:, -1].add(5.0), mask=mask)
    np.testing.assert_allclose(out2[:, :-1], out[:, :-1], atol=1e-6)
    assert not np.allclose(out2[:, -1], out[:, -1])


def test_diff_attention_adds_exactly_6d_parameters():
    soft = dj.SoftmaxAttention(D, H, rngs=nnx.Rngs(0))
    diff = _diff()
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert count(diff) == count(soft) + 6 * (D // H)


def test_lambda_vectors_are_drawn_with_std_0_1():
    attn = dj.DiffAttention(256, 2, 0.8, rngs=nnx.Rngs(0))  # d = 128: 512 draws in all
    draws = np.concatenate([np.asarray(getattr(attn, n)[...]) for n in
                            ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")])  # fmt: skip
    assert abs(draws.std() - 0.1) < 0.015 and abs(draws.mean()) < 0.015
    np.testing.assert_array_equal(attn.subln_scale[...], np.ones(256))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dj.DiffAttention(32, 3, 0.8, rngs=nnx.Rngs(0)), "divisible"),
        (lambda: dj.DiffAttention(30, 5, 0.8, rngs=nnx.Rngs(0)), "even"),
        (lambda: dj.SoftmaxAttention(30, 4, rngs=nnx.Rngs(0)), "divisible"),
    ],
)
def test_bad_attention_shapes_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_width_raises():
    with pytest.raises(ValueError, match=r"\[B, N, 32\]"):
        _diff()(jnp.zeros((2, 5, 16)))
    with pytest.raises(ValueError, match=r"\[B, N, 32\]"):
        _diff()(jnp.zeros((5, 32)))


def test_bfloat16_input_keeps_float32_softmax():
    attn = _diff()
    x = _x()
    out16, maps16 = attn(x.astype(jnp.bfloat16), return_maps=True)
    assert out16.dtype == jnp.bfloat16 and maps16.a1.dtype == jnp.float32
    out32 = attn(x)
    assert math.isfinite(float(jnp.abs(out16.astype(jnp.float32) - out32).max()))
    np.testing.assert_allclose(
        out16.astype(jnp.float32), out32, atol=0.1 * float(jnp.abs(out32).max())
    )
