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

import dataclasses
import json
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from diffjax.attention import (
    DENSE_INIT,
    IMPLS,
    AttentionMaps,
    DiffAttention,
    SoftmaxAttention,
    lambda_init_schedule,
)
from diffjax.config import check_bool, check_int, check_lambda_init, check_number
from diffjax.vit import Intermediates, run_blocks

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A causal language model.

    Attributes:
      attention: ``"diff"`` (Differential Transformer) or ``"softmax"`` (baseline).
      vocab_size: token ids 0..V−1 (the byte tokenizer: 256).
      width: model width D.
      depth: number of blocks.
      num_heads: heads of the softmax baseline, H_base (even); the DA model has H_base / 2 DIFF
        heads of sub-head dim d = D / H_base and value width 2d (parameter-matched).
      ffn_hidden: SwiGLU inner width; ``None`` for round(8/3·D) (the paper's choice).
      max_len: longest sequence the model accepts (RoPE has no table; this bounds inputs).
      rotary_base: RoPE base θ (10,000, the RoFormer/LLaMA default; the paper does not state its
        pre-extension value).
      lambda_init: ``"schedule"`` (0.8 − 0.6·exp(−0.3·l)) or a constant in [0, 1).
      rms_eps: epsilon of the pre-norm and final RMSNorms (the per-head DA norm uses 1e-5).
      dtype: ``"float32"`` or ``"float64"`` (exact analyses; needs ``jax_enable_x64``).
      attention_impl: ``"reference"``, ``"fused"`` or ``"fused_xla"`` (:mod:`diffjax.attention`).
      rotary_half: the half-split rotary pairing (x[i], x[i + d/2]) of GPT-NeoX and Hugging
        Face LLaMA (``rotate_half``) instead of the interleaved (x[2i], x[2i+1]) (softmax only).
      num_kv_heads: grouped-query attention (softmax only): k and v have this many heads, each
        read by ``num_heads / num_kv_heads`` consecutive query heads; ``None``: ``num_heads``.
      tie_embeddings: the output head is the token embedding, logits = RMSNorm(h_L) Eᵀ.
    """

    attention: Literal["softmax", "diff"] = "diff"
    vocab_size: int = 256
    width: int = 128
    depth: int = 4
    num_heads: int = 8
    ffn_hidden: int | None = None
    max_len: int = 256
    rotary_base: float = 10000.0
    lambda_init: str | float = "schedule"
    rms_eps: float = 1e-5
    dtype: str = "float32"
    attention_impl: Literal["reference", "fused", "fused_xla"] = "reference"
    rotary_half: bool = False
    num_kv_heads: int | None = None
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "width", "depth", "num_heads", "max_len"):
            check_int(name, getattr(self, name), 1)
        if self.attention not in ("softmax", "diff"):
            raise ValueError(f"attention must be 'softmax' or 'diff', got {self.attention!r}")
        if self.num_heads % 2 or self.width % self.num_heads:
            raise ValueError(
                f"num_heads must be even and divide width: got {self.num_heads} heads, "
                f"width {self.width}"
            )
        if (self.width // self.num_heads) % 2:
            raise ValueError(
                f"rotary embeddings need an even head dim, width / num_heads = "
                f"{self.width // self.num_heads}"
            )
        if self.ffn_hidden is not None:
            check_int("ffn_hidden", self.ffn_hidden, 1)
        check_number("rotary_base", self.rotary_base, 1, low_open=True)
        check_lambda_init(self.lambda_init)
        check_number("rms_eps", self.rms_eps, 0, low_open=True)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.attention_impl not in IMPLS:
            raise ValueError(f"attention_impl must be one of {IMPLS}, got {self.attention_impl!r}")
        if self.attention_impl != "reference" and self.dtype == "float64":
            raise ValueError("float64 (exact) models need attention_impl='reference'")
        check_bool("rotary_half", self.rotary_half)
        check_bool("tie_embeddings", self.tie_embeddings)
        if self.num_kv_heads is not None:
            check_int("num_kv_heads", self.num_kv_heads, 1)
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"num_kv_heads {self.num_kv_heads} does not divide num_heads "
                                 f"{self.num_heads}")  # fmt: skip
        if self.attention != "softmax" and (self.num_kv_heads is not None or self.rotary_half):
            raise ValueError("num_kv_heads and rotary_half (imported LLaMA-style checkpoints) "
                             "are for softmax models")  # fmt: skip

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict; the imported-model fields (:data:`OPTIONAL_LM_FIELDS`)
        only where they differ from their defaults, so earlier configs and hashes stay valid."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return {k: v for k, v in d.items()
                if k not in OPTIONAL_LM_FIELDS or v != OPTIONAL_LM_FIELDS[k]}  # fmt: skip

    @property
    def hidden(self) -> int:
        """The SwiGLU inner width."""
        return self.ffn_hidden if self.ffn_hidden is not None else round(8 * self.width / 3)

    @property
    def accum_dtype(self) -> str:
        return self.dtype

    def is_diff_layer(self, layer: int) -> bool:
        return self.attention == "diff"

    def layer_lambda_init(self, layer: int) -> float:
        """λ_init of 0-based ``layer``."""
        if self.lambda_init == "schedule":
            return lambda_init_schedule(layer)
        return float(self.lambda_init)

    def replace(self, **changes) -> LMConfig:
        return dataclasses.replace(self, **changes)


# LMConfig fields added for imported checkpoints, with their defaults (left out of to_dict there).
OPTIONAL_LM_FIELDS = {"rotary_half": False, "num_kv_heads": None, "tie_embeddings": False}


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
