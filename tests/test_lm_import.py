"""Hugging Face LLaMA checkpoints into :mod:`diffjax.lm`: next-token logits against transformers'
``LlamaForCausalLM`` on the files ``save_pretrained`` writes (grouped-query attention, the
half-split RoPE, RMSNorm, SwiGLU, tied and untied embeddings), float32 and float64; the exact
branch analysis of the imported model against torch autograd of transformers' attention maps;
unmodelled configurations refused.

transformers evaluates three pieces in float32 even in a float64 model: the RoPE angles, RMSNorm
and the eager softmax. For the float64 reference those three are evaluated in float64 (the same
formulas), so the comparison measures the import, not transformers' float32 islands.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

from diffjax import analysis as an  # noqa: E402
from diffjax.lm_import import ConversionError, config_from_hf, convert_llama  # noqa: E402
from diffjax.torch_weights import read_weights  # noqa: E402
from tests.test_vit_import import _randomise  # noqa: E402

SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=50, max_position_embeddings=64)  # fmt: skip


def _reference(tie: bool, attention: str = "sdpa"):
    config = transformers.LlamaConfig(**SIZES, tie_word_embeddings=tie, rope_theta=500.0)
    config._attn_implementation = attention
    torch.manual_seed(0)
    ref = _randomise(transformers.LlamaForCausalLM(config))
    with torch.no_grad():  # RMSNorm scales near 1 (their names hold no "norm" to _randomise)
        for name, p in ref.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape))
    if tie:
        ref.tie_weights()
    return ref


def _float64_islands(ref, monkeypatch):
    """``ref`` in float64 with RoPE angles, RMSNorm and the eager softmax in float64 too."""
    ref = ref.double()
    rope = ref.model.rotary_emb
    dim = ref.config.hidden_size // ref.config.num_attention_heads
    theta = ref.config.rope_parameters["rope_theta"]

    def angles(x, position_ids):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs = position_ids[..., None].double() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    rope.forward = angles

    def rms_norm(m):
        return lambda x: (
            m.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
        )

    for m in ref.modules():
        if type(m).__name__ == "LlamaRMSNorm":
            m.forward = rms_norm(m)
    softmax = torch.nn.functional.softmax

    def softmax_in_dtype(x, dim=None, dtype=None, **kw):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype, **kw)

    monkeypatch.setattr(torch.nn.functional, "softmax", softmax_in_dtype)
    return ref


@pytest.mark.parametrize("tie", [False, True])
def test_llama_logits_match(tie, tmp_path, monkeypatch):
    ref = _reference(tie)
    ref.save_pretrained(tmp_path)
    state = read_weights(tmp_path / "model.safetensors")
    config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert (config.num_kv_heads, config.rotary_half, config.tie_embeddings) == (2, True, tie)
    assert config.rotary_base == 500.0 and config.ffn_hidden == 48
    model = convert_llama(state, config)
    tokens = np.random.default_rng(0).integers(0, 50, (2, 9))
    with torch.no_grad():
        want32 = ref(torch.from_numpy(tokens)).logits.numpy()
        want64 = _float64_islands(ref, monkeypatch)(torch.from_numpy(tokens)).logits.numpy()
    assert_logits_match(model, tokens, want32, want64)


def lm_logits(model, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next-token logits of ``model`` on ``tokens`` [B, N]: float32 and its float64 evaluation."""
    got32 = np.asarray(model(tokens.astype(np.int32)))
    with jax.enable_x64():
        got64 = np.asarray(an.with_dtype(model, "float64")(tokens.astype(np.int32)))
    return got32, got64


def assert_logits_match(model, tokens, want32, want64) -> np.ndarray:
    """``model``'s logits within 1e-5 (float32) and 1e-12 (float64) of the references, relative
    to the largest |float64 logit|; the float32 logits."""
    got32, got64 = lm_logits(model, tokens)
    scale = np.abs(want64).max()
    assert np.abs(got32 - want32).max() / scale < 1e-5
    assert np.abs(got64 - want64).max() / scale < 1e-12
    return got32


def test_analysis_of_imported_llama_matches_torch_autograd(monkeypatch):
    """cos θ between the Jacobians (w.r.t. the input embeddings) of heads 2h and 2h+1, per query
    row, from diffjax's exact analysis and from torch autograd of transformers' eager maps."""
    ref = _float64_islands(_reference(tie=False, attention="eager"), monkeypatch)
    state = {k: v.float().numpy() for k, v in ref.state_dict().items()}
    model = convert_llama(state, config_from_hf(ref.config.to_dict()))
    tokens = np.random.default_rng(3).integers(0, 50, (1, 6))
    with jax.enable_x64():
        m64 = an.with_dtype(model, "float64")
        h0 = an.layer_input(m64, tokens.astype(np.int32), 1, "embeddings")
        gram = an.branch_grams(m64, h0, 1, wrt="embeddings")
        cos = np.asarray(an.alignment(gram).cos[0])  # [H/2, N]
    emb = torch.from_numpy(np.array(h0[0]))

    def maps(x):
        out = ref(inputs_embeds=x[None], output_attentions=True)
        return out.attentions[1][0]  # [H, N, N]

    jac = torch.autograd.functional.jacobian(maps, emb).numpy().reshape(4, 6, -1)
    even, odd = jac[0::2], jac[1::2]
    with np.errstate(invalid="ignore"):  # row 0: 0 / 0, see below
        want = np.sum(even * odd, -1) / np.sqrt(np.sum(even**2, -1) * np.sum(odd**2, -1))
    # Row 0 attends only to itself: a constant map, no direction (NaN on both sides).
    assert np.all(np.isnan(cos[:, 0])) and np.all(np.isnan(want[:, 0]))
    np.testing.assert_allclose(cos[:, 1:], want[:, 1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(model_type="mistral"), "model_type 'mistral'"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "RoPE type 'llama3'"),
        (dict(attention_bias=True), "attention_bias True"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(head_dim=16), "head_dim 16"),
        (dict(num_attention_heads=1, num_key_value_heads=1, head_dim=32), "even head count"),
    ],
)
def test_unmodelled_llama_configs_are_refused(change, match):
    d = transformers.LlamaConfig(**SIZES).to_dict()
    d.pop("rope_parameters", None)
    with pytest.raises(ConversionError, match=match):
        config_from_hf(d | change)


def test_tied_head_must_equal_the_embedding():
    ref = _reference(tie=True)
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ConversionError, match="lm_head.weight differs"):
        convert_llama(state, config_from_hf(ref.config.to_dict()))
