"""The Differential Transformer authors' layout (``MultiheadDiffAttn`` of microsoft/unilm's
Diff-Transformer as ``self_attn`` of a LLaMA-style decoder) into :mod:`diffjax.lm`'s DA model:
next-token logits and λ against a torch re-implementation written here from the paper's
formulas (Ye et al. 2024, arXiv 2410.05258) with the authors' parameter names and shapes, in
float64 (1e-12 relative) and float32 (1e-5); grouped-query DIFF attention refused.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffjax.lm import LMConfig  # noqa: E402
from diffjax.lm_import import ConversionError, convert_llama  # noqa: E402
from tests.test_lm_import import assert_logits_match  # noqa: E402

V, D, H, DEPTH, HIDDEN, THETA, EPS = 50, 32, 2, 3, 48, 10000.0, 1e-6  # H: the authors' DIFF heads


def _lambda_init(layer: int) -> float:
    """The paper's 0.8 − 0.6·exp(−0.3·(l − 1)) for the 1-based layer l = layer + 1."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


class DiffAttn(torch.nn.Module):
    """Multi-head differential attention of one layer, causal, interleaved RoPE."""

    def __init__(self, layer: int):
        super().__init__()
        self.d = D // H // 2
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            torch.nn.Linear(D, D, bias=False) for _ in range(4)
        )
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, torch.nn.Parameter(0.3 * torch.randn(self.d)))
        self.subln = torch.nn.RMSNorm(2 * self.d, eps=1e-5)
        self.lambda_init = _lambda_init(layer)

    def rotate(self, t):
        """t [B, N, heads, d]: pair (2i, 2i+1) at position p turned by p·θ^(−2i/d)."""
        n, d = t.shape[1], t.shape[-1]
        angle = torch.arange(n, dtype=t.dtype)[:, None] * THETA ** (
            -torch.arange(0, d, 2, dtype=t.dtype) / d
        )
        cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]
        even, odd = t[..., 0::2], t[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.rotate(self.q_proj(x).view(b, n, 2 * H, self.d)).transpose(1, 2)
        k = self.rotate(self.k_proj(x).view(b, n, 2 * H, self.d)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, H, 2 * self.d).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.d)
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        a = logits.masked_fill(future, -math.inf).softmax(-1).view(b, H, 2, n, n)
        lam1 = torch.exp(self.lambda_q1 @ self.lambda_k1)
        lam = lam1 - torch.exp(self.lambda_q2 @ self.lambda_k2) + self.lambda_init
        o = self.subln((a[:, :, 0] - lam * a[:, :, 1]) @ v) * (1 - self.lambda_init)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, D)), lam


class Layer(torch.nn.Module):
    def __init__(self, layer: int):
        super().__init__()
        self.input_layernorm = torch.nn.RMSNorm(D, eps=EPS)
        self.self_attn = DiffAttn(layer)
        self.post_attention_layernorm = torch.nn.RMSNorm(D, eps=EPS)
        self.mlp = torch.nn.Module()
        self.mlp.gate_proj = torch.nn.Linear(D, HIDDEN, bias=False)
        self.mlp.up_proj = torch.nn.Linear(D, HIDDEN, bias=False)
        self.mlp.down_proj = torch.nn.Linear(HIDDEN, D, bias=False)

    def forward(self, h):
        a, lam = self.self_attn(self.input_layernorm(h))
        h = h + a
        f = self.post_attention_layernorm(h)
        m = self.mlp
        return h + m.down_proj(torch.nn.functional.silu(m.gate_proj(f)) * m.up_proj(f)), lam


class DiffLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(V, D)
        self.model.layers = torch.nn.ModuleList(Layer(i) for i in range(DEPTH))
        self.model.norm = torch.nn.RMSNorm(D, eps=EPS)
        self.lm_head = torch.nn.Linear(D, V, bias=False)

    def forward(self, tokens):
        h, lams = self.model.embed_tokens(tokens), []
        for layer in self.model.layers:
            h, lam = layer(h)
            lams.append(lam)
        return self.lm_head(self.model.norm(h)), lams


def _reference() -> DiffLM:
    torch.manual_seed(0)
    ref = DiffLM()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight") or name.endswith("subln.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape))
            elif "lambda" not in name:
                p.normal_(0, 0.3)
    return ref


CONFIG = LMConfig(attention="diff", vocab_size=V, width=D, depth=DEPTH, num_heads=2 * H,
                  ffn_hidden=HIDDEN, max_len=64, rotary_base=THETA, rms_eps=EPS)  # fmt: skip


def test_authors_layout_logits_and_lambda_match():
    ref = _reference()
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    model = convert_llama(state, CONFIG)
    tokens = np.random.default_rng(0).integers(0, V, (2, 11))
    with torch.no_grad():
        want32, _ = ref(torch.from_numpy(tokens))
        want64, lams = ref.double()(torch.from_numpy(tokens))
    assert_logits_match(model, tokens, want32.numpy(), want64.numpy())
    np.testing.assert_allclose(model.lambdas(), [float(x) for x in lams], rtol=1e-6)
    assert [b.attn.lambda_init for b in model.blocks] == [_lambda_init(i) for i in range(DEPTH)]


def test_grouped_query_diff_attention_is_refused():
    state = {k: v.detach().numpy().copy() for k, v in _reference().state_dict().items()}
    state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((D // 2, D), np.float32)
    with pytest.raises(ConversionError, match="grouped-query DIFF attention"):
        convert_llama(state, CONFIG)
