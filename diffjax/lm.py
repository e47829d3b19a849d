"""Decoder-only language models: the Differential Transformer and its standard baseline.

    h_0 = E[tokens],  h'_l = h_l + Attn_l(RMSNorm(h_l)),  h_{l+1} = h'_l + SwiGLU(RMSNorm(h'_l))
    logits = RMSNorm(h_L) W_out

as the reference language model defines it (Ye et al. 2024, arXiv 2410.05258): causal
attention with rotary position embeddings on queries and keys (no learned positions), pre-norm
RMSNorm, SwiGLU feed-forward (swish(x W_g) ⊙ x W_1) W_2 of inner width 8/3·D, no biases
anywhere, an untied output head. ``attention="diff"`` uses Differential Attention in every
layer with the depth schedule λ_init = 0.8 − 0.6·exp(−0.3·l) (l 0-based), its per-head RMSNorm
and the (1 − λ_init) factor; ``attention="softmax"`` is the parameter-matched LLaMA-style
Transformer with twice the heads (``num_heads`` is always the baseline's head count, as in
:mod:`diffjax.attention`). Both use diffjax's attention modules, with ``causal=True`` and
``rotary_base``.

Blocks mirror :class:`diffjax.vit.Block` (``attention_input``, ``attn``, ``__call__(h,
return_maps=)``) and the model has ``embed``, ``blocks`` and ``config.depth``, so the analyses of
:mod:`diffjax.analysis` apply to it unchanged (``wrt="embeddings"``: the input embeddings h_0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffjax.attention import (
    DENSE_INIT,
    AttentionMaps,
    DiffAttention,
    SoftmaxAttention,
)
from diffjax.lm_config import OPTIONAL_LM_FIELDS, LMConfig  # noqa: F401 (re-exported)
from diffjax.vit import Intermediates, run_blocks

Array = jax.Array


def _linear(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)


def _rms_norm(config: LMConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(config.width, epsilon=config.rms_eps, dtype=config.dtype, rngs=rngs)


def _tokens(layer: nnx.Linear, x: Array) -> Array:
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class LMBlock(nnx.Module):
    """Pre-norm decoder block: RMSNorm → causal (D)A with RoPE → residual; RMSNorm → SwiGLU."""

    def __init__(self, config: LMConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        self.dtype = jnp.dtype(c.dtype)
        self.norm1 = _rms_norm(c, rngs)
        attn = dict(use_bias=False, impl=c.attention_impl, causal=True,
                    rotary_base=float(c.rotary_base), rngs=rngs)  # fmt: skip
        if c.is_diff_layer(layer):
            self.attn = DiffAttention(c.width, c.num_heads, c.layer_lambda_init(layer), **attn)
        else:
            self.attn = SoftmaxAttention(c.width, c.num_heads, rotary_half=c.rotary_half,
                                         num_kv_heads=c.num_kv_heads, **attn)  # fmt: skip
        self.norm2 = _rms_norm(c, rngs)
        self.gate = _linear(c.width, c.hidden, self.dtype, rngs)
        self.up = _linear(c.width, c.hidden, self.dtype, rngs)
        self.down = _linear(c.hidden, c.width, self.dtype, rngs)

    def attention_input(self, h: Array) -> Array:
        """RMSNorm1(h): what the attention layer sees. [B, N, D]."""
        return self.norm1(h).astype(self.dtype)

    def __call__(self, h: Array, *, return_maps: bool = False):
        """h [B, N, D] → h_next [B, N, D], and the layer's maps if asked."""
        a = self.attn(self.attention_input(h), return_maps=return_maps)
        a, maps = a if return_maps else (a, None)
        h = h + a.astype(h.dtype)
        f = self.norm2(h)
        h = h + _tokens(self.down, jax.nn.silu(_tokens(self.gate, f)) * _tokens(self.up, f))
        return (h, maps) if return_maps else h


class LM(nnx.Module):
    """A causal LM: tokens [B, N] int → next-token logits [B, N, V] (float32, or float64)."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.embedding = nnx.Param(DENSE_INIT(rngs.params(), (c.vocab_size, c.width), jnp.float32))
        self.blocks = nnx.List([LMBlock(c, i, rngs=rngs) for i in range(c.depth)])
        self.norm = _rms_norm(c, rngs)
        self.head = None if c.tie_embeddings else _linear(c.width, c.vocab_size, c.dtype, rngs)

    def lambdas(self) -> list[float | None]:
        """λ of every layer (host floats, for logging); ``None`` for softmax layers."""
        return [float(b.attn.lam()) if isinstance(b.attn, DiffAttention) else None
                for b in self.blocks]  # fmt: skip

    def check_tokens(self, tokens: Array) -> None:
        """Raise ValueError unless ``tokens`` is integer [B, N] with 1 <= N <= max_len."""
        c = self.config
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= c.max_len:
            raise ValueError(f"tokens must be [B, N] with N <= {c.max_len}, got {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")

    def embed(self, tokens: Array) -> Array:
        """Input embeddings h_0 = E[tokens]: [B, N] → [B, N, D] (the compute dtype)."""
        self.check_tokens(tokens)
        return self.embedding[...].astype(self.config.dtype)[tokens]

    def embedding_matrix(self) -> Array:
        """E [V, D] in the compute dtype (embedding attacks, HotFlip, GCG)."""
        return self.embedding[...].astype(self.config.dtype)

    def from_embeddings(self, h: Array, *, capture: bool = False):
        """Logits [B, N, V] of input embeddings h_0 [B, N, D]; with ``capture`` also the
        :class:`~diffjax.vit.Intermediates` (block inputs and maps)."""
        c = self.config
        if h.ndim != 3 or h.shape[-1] != c.width or not 1 <= h.shape[1] <= c.max_len:
            raise ValueError(f"embeddings must be [B, N <= {c.max_len}, {c.width}], got {h.shape}")
        h, captured = run_blocks(self.blocks, h.astype(c.dtype), capture=capture)
        x = self.norm(h)
        logits = x @ self.embedding_matrix().T if self.head is None else _tokens(self.head, x)
        return (logits, captured) if capture else logits

    def __call__(self, tokens: Array, *, capture: bool = False):
        """Next-token logits of ``tokens`` [B, N]: [B, N, V] (position i predicts token i+1)."""
        return self.from_embeddings(self.embed(tokens), capture=capture)


def parameter_matched(config: LMConfig) -> tuple[LMConfig, LMConfig]:
    """(DA model, standard model) of one shape: the same width, depth and ``num_heads`` (the
    baseline's heads; DA has half as many DIFF heads of twice the value width)."""
    return config.replace(attention="diff"), config.replace(attention="softmax")


__all__ = ["LM", "LMBlock", "LMConfig", "AttentionMaps", "Intermediates", "parameter_matched"]
