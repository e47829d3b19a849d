"""Hugging Face LLaMA-style checkpoints (``LlamaForCausalLM``) → a diffjax :class:`~diffjax.lm.LM`,
without torch.

    state, _ = read_hf_weights(directory)            # model.safetensors, or its shards
    config = config_from_hf(json.load(open("config.json")))
    model = convert_llama(state, config)              # strict: every key, every shape
    tokenizer = load_tokenizer(directory / "tokenizer.json")   # the `tokenizers` library

The layout: ``model.embed_tokens``, ``model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}``, ``model.norm``, ``lm_head`` (absent when
the embeddings are tied). What it computes is :mod:`diffjax.lm`'s softmax model with the
half-split rotary pairing (``rotate_half``), grouped-query attention
(``num_key_value_heads``), RMSNorm, the SwiGLU MLP, and tied or untied output embeddings; every
configuration it does not model (RoPE scaling, attention or MLP biases, a head dim other than
width / heads, another activation, an odd head count, which the head-pair analysis needs) is
refused by :func:`config_from_hf`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np
from flax import nnx

from diffjax.lm import LM, LMConfig
from diffjax.torch_weights import (
    ConversionError,
    Rule,
    check_state_dict,
    identity,
    linear_rules,
    load_into,
    read_safetensors,
)

MODEL_TYPES = ("llama",)
SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
INSTALL_TOKENIZERS = "pip install 'diffjax[lm-import]' (the `tokenizers` package)"


def read_hf_weights(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """The state dict of a Hugging Face checkpoint directory, and the names of the files it
    read: ``model.safetensors``, or the index ``model.safetensors.index.json`` and the shards it
    maps every key to (each key from its shard).

    Raises:
      ConversionError: neither file (naming what is there instead), an unreadable index, a
        missing shard, or a shard whose keys differ from what the index assigns it.
    """
    directory = pathlib.Path(directory)
    index = directory / SHARD_INDEX
    if not index.is_file():
        if (directory / SINGLE_FILE).is_file():
            return read_safetensors(directory / SINGLE_FILE), [SINGLE_FILE]
        found = sorted(p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        hint = f" (found {found}: re-save with save_pretrained(safe_serialization=True))"
        raise ConversionError(
            f"{directory} has neither {SINGLE_FILE} nor {SHARD_INDEX}" + (hint if found else "")
        )
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = {str(f) for f in weight_map.values()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ConversionError(f"{index}: not a safetensors shard index ({e})") from e
    state: dict[str, np.ndarray] = {}
    for shard in sorted(shards):
        if pathlib.Path(shard).name != shard:
            raise ConversionError(f"{index}: shard {shard!r} is not a file name in {directory}")
        tensors = read_safetensors(directory / shard)
        want = {k for k, f in weight_map.items() if f == shard}
        if set(tensors) != want:
            extra, missing = sorted(set(tensors) - want), sorted(want - set(tensors))
            raise ConversionError(f"{directory / shard} does not hold what {SHARD_INDEX} says: "
                                  f"unlisted {extra[:5]}, missing {missing[:5]}")  # fmt: skip
        state.update(tensors)
    return state, [SHARD_INDEX, *sorted(shards)]


def load_tokenizer(path: str | os.PathLike):
    """The ``tokenizers.Tokenizer`` of a Hugging Face ``tokenizer.json`` (its own pre- and
    post-processing: a LLaMA tokenizer prepends its BOS token).

    Raises:
      ConversionError: ``tokenizers`` is not installed (saying what to install), or the file
        is missing or not a tokenizer.
    """
    try:
        import tokenizers
    except ImportError:
        raise ConversionError(f"reading {path} needs {INSTALL_TOKENIZERS}") from None
    if not os.path.isfile(path):
        raise ConversionError(f"tokenizer file {path} does not exist")
    try:
        return tokenizers.Tokenizer.from_file(os.fspath(path))
    except Exception as e:  # the Rust parser raises a bare Exception on a bad file
        raise ConversionError(f"{path}: not a tokenizers tokenizer.json ({e})") from e


def _rope_theta(d: Mapping) -> float:
    """RoPE θ of a config.json (transformers < 5: ``rope_theta`` and ``rope_scaling``; ≥ 5:
    ``rope_parameters``), refusing any scaled RoPE."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ConversionError(f"RoPE type {kind!r} (scaled positions) is not modelled")
    return float(params.get("rope_theta", d.get("rope_theta", 10000.0)))


def config_from_hf(d: Mapping, dtype: str = "float32") -> LMConfig:
    """The :class:`LMConfig` of a Hugging Face LLaMA ``config.json`` (``d``).

    Raises:
      ConversionError: another model type, or a setting diffjax does not model.
    """
    if d.get("model_type") not in MODEL_TYPES:
        raise ConversionError(f"model_type {d.get('model_type')!r} is not one of {MODEL_TYPES}")
    width, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
    refused = {
        "hidden_act": (d.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(d.get("attention_bias", False)), False),
        "mlp_bias": (bool(d.get("mlp_bias", False)), False),
        "head_dim": (d.get("head_dim") or width // heads, width // heads),
    }
    bad = [f"{k} {got!r} (modelled: {want!r})" for k, (got, want) in refused.items() if got != want]
    if bad:
        raise ConversionError("not modelled: " + ", ".join(bad))
    if heads % 2:
        raise ConversionError(
            f"{heads} attention heads: the analysis pairs heads (2h, 2h+1), so diffjax's "
            "language models need an even head count"
        )
    kv = int(d.get("num_key_value_heads") or heads)
    return LMConfig(
        attention="softmax",
        vocab_size=int(d["vocab_size"]),
        width=width,
        depth=int(d["num_hidden_layers"]),
        num_heads=heads,
        ffn_hidden=int(d["intermediate_size"]),
        max_len=int(d.get("max_position_embeddings", 2048)),
        rotary_base=_rope_theta(d),
        rms_eps=float(d.get("rms_norm_eps", 1e-6)),
        dtype=dtype,
        rotary_half=True,
        num_kv_heads=None if kv == heads else kv,
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
    )


def diff_attention_rules(src: str, dst: tuple, config: LMConfig) -> dict[str, Rule]:
    """The keys of the Differential Transformer authors' ``MultiheadDiffAttn`` (Ye et al. 2024,
    microsoft/unilm ``Diff-Transformer/multihead_diffattn.py``; multi-head, no GQA) under the
    prefix ``src`` → the :class:`~diffjax.attention.DiffAttention` at ``dst``.

    Their module computes what diffjax's does, with the same arrangement of the numbers: q and k
    viewed as 2H sub-heads of d = D / (2H) (sub-heads 2h and 2h+1 make DIFF head h), v as H
    heads of 2d, the interleaved RoPE per sub-head, softmax scale d^(−1/2), λ = exp(λq1·λk1) −
    exp(λq2·λk2) + λ_init shared by the heads, ``subln`` (RMSNorm over 2d, eps 1e-5, one
    elementwise scale for all heads) times (1 − λ_init), then ``out_proj``. λ_init is not
    saved: both use 0.8 − 0.6·exp(−0.3·l) of the 0-based layer index l (their ``depth``).
    """
    d = config.width // config.num_heads
    rules: dict[str, Rule] = {}
    for name, ours in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "out")):
        rules.update(linear_rules(f"{src}{name}_proj", dst + (ours,), config.width, config.width,
                                  bias=False))  # fmt: skip
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        rules[src + name] = ((d,), [(dst + (name,), identity)])
    rules[f"{src}subln.weight"] = ((2 * d,), [(dst + ("subln_scale",), identity)])
    return rules


def llama_rules(config: LMConfig) -> dict[str, Rule]:
    """For every key of a ``LlamaForCausalLM`` state dict of ``config``: shape and target. For a
    DA ``config`` (``attention="diff"``), the same layout with the authors' ``MultiheadDiffAttn``
    as ``self_attn`` (:func:`diff_attention_rules`)."""
    c = config
    kv_width = (c.num_kv_heads or c.num_heads) * (c.width // c.num_heads)
    rules: dict[str, Rule] = {
        "model.embed_tokens.weight": ((c.vocab_size, c.width), [(("embedding",), identity)]),
        "model.norm.weight": ((c.width,), [(("norm", "scale"), identity)]),
    }
    if not c.tie_embeddings:
        rules.update(linear_rules("lm_head", ("head",), c.width, c.vocab_size, bias=False))
    for i in range(c.depth):
        src, dst = f"model.layers.{i}.", ("blocks", i)
        rules[f"{src}input_layernorm.weight"] = ((c.width,), [(dst + ("norm1", "scale"), identity)])
        rules[f"{src}post_attention_layernorm.weight"] = (
            (c.width,),
            [(dst + ("norm2", "scale"), identity)],
        )
        if c.attention == "diff":
            rules.update(diff_attention_rules(f"{src}self_attn.", dst + ("attn",), c))
        else:
            for name, ours, n_out in (("q", "q", c.width), ("k", "k", kv_width),
                                      ("v", "v", kv_width), ("o", "out", c.width)):  # fmt: skip
                rules.update(linear_rules(f"{src}self_attn.{name}_proj", dst + ("attn", ours),
                                          c.width, n_out, bias=False))  # fmt: skip
        for name, n_in, n_out in (("gate", c.width, c.hidden), ("up", c.width, c.hidden),
                                  ("down", c.hidden, c.width)):  # fmt: skip
            rules.update(linear_rules(f"{src}mlp.{name}_proj", dst + (name,), n_in, n_out,
                                      bias=False))  # fmt: skip
    return rules


def convert_llama(state: Mapping[str, np.ndarray], config: LMConfig, seed: int = 0) -> LM:
    """An :class:`LM` of ``config`` (:func:`config_from_hf`) holding a LLaMA state dict's
    weights (Linear weights transposed to Dense kernels; parameters float32). A tied
    checkpoint's ``lm_head.weight``, when a writer kept it, must equal the embedding. A DA
    ``config`` (``LMConfig(attention="diff", num_heads=2H, ...)`` for the authors' H DIFF heads,
    given by the caller: no Hugging Face config describes it) reads the Differential
    Transformer layout (:func:`llama_rules`).

    Raises:
      ConversionError: every missing, unexpected or wrong-shaped key named.
    """
    state = dict(state)
    if config.tie_embeddings and "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if not np.array_equal(head, state.get("model.embed_tokens.weight")):
            raise ConversionError("tie_word_embeddings, but lm_head.weight differs from the "
                                  "token embedding")  # fmt: skip
    k_proj = state.get("model.layers.0.self_attn.k_proj.weight")
    if config.attention == "diff" and k_proj is not None and k_proj.shape[0] != config.width:
        raise ConversionError(
            f"k_proj has {k_proj.shape[0]} outputs, not width {config.width}: grouped-query "
            "DIFF attention (num_kv_heads) is not modelled"
        )
    rules = llama_rules(config)
    check_state_dict(state, rules, "LLaMA model of this config", f"\n  config: {config}")
    return load_into(LM(config, rngs=nnx.Rngs(seed)), state, rules)
