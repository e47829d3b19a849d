"""Causal DA, rotary embeddings and the decoder-only LMs against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.attention import DiffAttention, SoftmaxAttention, causal_mask, rotary
from diffjax.lm import LM, LMConfig, parameter_matched
from diffjax.vit import count_params
from tests import reference


def _pure(module):
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_rotary_matches_pairwise_rotation_and_keeps_norms():
    with jax.enable_x64():
        x = jax.random.normal(jax.random.key(0), (2, 7, 6), jnp.float64)
        got = np.asarray(rotary(x, 100.0, seq_axis=1))
        np.testing.assert_allclose(got, reference.rotary(np.asarray(x), 100.0), atol=1e-13)
        # a rotation: per-pair norms are kept, and position 0 is untouched
        pairs = lambda a: np.linalg.norm(a.reshape(2, 7, 3, 2), axis=-1)  # noqa: E731
        np.testing.assert_allclose(pairs(got), pairs(np.asarray(x)), rtol=1e-13)
        np.testing.assert_array_equal(got[:, 0], np.asarray(x)[:, 0])
        # relative positions: <R_m q, R_n k> depends on m − n only
        q, k = x[0, 0], x[1, 0]
        qs = rotary(jnp.broadcast_to(q, (1, 7, 6)), 100.0, 1)[0]
        ks = rotary(jnp.broadcast_to(k, (1, 7, 6)), 100.0, 1)[0]
        np.testing.assert_allclose(qs[5] @ ks[3], qs[2] @ ks[0], rtol=1e-12)
    with pytest.raises(ValueError, match="even head dim"):
        rotary(jnp.ones((1, 3, 5)), 10.0, 1)


# fused_xla: the fused formulation forced on this CPU (where "fused" runs the reference one)
@pytest.mark.parametrize("impl", ["reference", "fused_xla"])
def test_causal_rotary_attention_matches_numpy(impl):
    with jax.enable_x64():
        x64 = jax.random.normal(jax.random.key(1), (2, 6, 16), jnp.float64)
        dtype = jnp.float64 if impl == "reference" else jnp.float32
        tol = 1e-12 if impl == "reference" else 2e-5
        mask = np.tril(np.ones((6, 6), bool))
        da = DiffAttention(16, 4, 0.35, use_bias=False, impl=impl, causal=True,
                           rotary_base=50.0, rngs=nnx.Rngs(0))  # fmt: skip
        p = da.params()
        out = da(x64.astype(dtype))
        ref, a1, a2, lam = reference.diff_attention(p, np.asarray(x64), 4, 0.35, mask,
                                                    rotary_base=50.0)  # fmt: skip
        np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=tol, rtol=tol)
        sm = SoftmaxAttention(16, 4, use_bias=False, impl=impl, causal=True, rotary_base=50.0,
                              rngs=nnx.Rngs(0))  # fmt: skip
        ref_sm, maps = reference.softmax_attention(sm.params(), np.asarray(x64), 4, mask, 50.0)
        np.testing.assert_allclose(np.asarray(sm(x64.astype(dtype)), np.float64), ref_sm,
                                   atol=tol, rtol=tol)  # fmt: skip
        if impl == "reference":
            _, m = da(x64, return_maps=True)
            np.testing.assert_allclose(m.a1, a1, atol=1e-13)
            np.testing.assert_allclose(m.a2, a2, atol=1e-13)
            assert float(m.lam) == pytest.approx(lam, abs=1e-14)
            assert np.all(np.asarray(m.a1)[..., ~mask] == 0)  # exactly no future keys


def test_causal_mask_and_position_options():
    np.testing.assert_array_equal(causal_mask(3), np.tril(np.ones((3, 3), bool)))
    with pytest.raises(ValueError, match="rotary_base"):
        SoftmaxAttention(8, 2, rotary_base=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="causal"):
        DiffAttention(8, 2, 0.2, causal=1, rngs=nnx.Rngs(0))


def _small(attention, **kw):
    return LMConfig(attention=attention, vocab_size=11, width=16, depth=3, num_heads=4,
                    max_len=8, rotary_base=30.0, **kw)  # fmt: skip


@pytest.mark.parametrize("attention", ["diff", "softmax"])
def test_lm_forward_matches_numpy(attention):
    with jax.enable_x64():
        config = _small(attention, dtype="float64")
        model = LM(config, rngs=nnx.Rngs(3))
        tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, 11)
        got = np.asarray(model(tokens))
        assert got.dtype == np.float64
        want = reference.lm_logits(_pure(model), config, np.asarray(tokens))
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-12)
        # causality: changing the last token leaves every earlier prediction bit-identical
        changed = np.asarray(model(tokens.at[:, -1].set((tokens[:, -1] + 1) % 11)))
        np.testing.assert_array_equal(changed[:, :-1], got[:, :-1])
        assert np.abs(changed[:, -1] - got[:, -1]).max() > 1e-6


def test_lm_parameter_matched_and_schedule():
    da_cfg, sm_cfg = parameter_matched(_small("diff"))
    da, sm = LM(da_cfg, rngs=nnx.Rngs(0)), LM(sm_cfg, rngs=nnx.Rngs(0))
    d = 16 // 4
    assert count_params(da) - count_params(sm) == 3 * 6 * d  # λ vectors (4d) + subln (2d)
    assert da_cfg.hidden == round(8 * 16 / 3)
    inits = [b.attn.lambda_init for b in da.blocks]
    np.testing.assert_allclose(inits, [0.8 - 0.6 * np.exp(-0.3 * layer) for layer in range(3)])
    assert all(b.attn.causal and b.attn.rotary_base == 30.0 for b in sm.blocks)
    assert sm.lambdas() == [None] * 3


def test_lm_rejects_bad_inputs_and_configs():
    model = LM(_small("diff"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="N <= 8"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="integer ids"):
        model(jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="num_heads must be even"):
        LMConfig(num_heads=3, width=12)
    with pytest.raises(ValueError, match="even head dim"):
        LMConfig(num_heads=4, width=12)
    with pytest.raises(ValueError, match="lambda_init"):
        LMConfig(lambda_init="fixed")
