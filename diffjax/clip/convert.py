"""Released PyTorch CLIP / DiffCLIP checkpoints → diffjax parameters, without torch.

    state = read_state_dict("checkpoint_best.pt")          # {torch key: np.ndarray}
    model = convert_state_dict(state, clip_preset("diffclip_b16"))
    save_model("models/diffclip_cc3m", model)              # diffjax.checkpoint, orbax

The files are read without torch by :mod:`diffjax.torch_weights` (``read_state_dict``: a
restricted unpickler, only the model's storages are read).

Key conventions are those of the DiffCLIP release (arXiv 2503.06626; DiffCLIP: timm
``DifferentialVisionTransformer`` + the ``DiffCLIP`` text tower; baseline CLIP: timm ViT with fused
``qkv`` + OpenAI text tower with ``nn.MultiheadAttention`` ``in_proj``), as docs/clip.md lists.
Conversion is strict: every expected key must be present with its exact shape, no unexpected key may
remain, and every diffjax parameter must be written exactly once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from diffjax.clip.config import CLIPConfig
from diffjax.clip.model import CLIP
from diffjax.torch_weights import (
    ConversionError,
    Path,
    Rule,
    conv_to_dense,
    identity,
    linear_rules,
    load_into,
    norm_rules,
    read_state_dict,
    read_weights,
    rows,
    transpose,
)
from diffjax.torch_weights import check_state_dict as check_rules

__all__ = ["ConversionError", "read_state_dict"]  # re-exported: the reader lives in torch_weights


def _attention_rules(
    prefix: str, target: Path, width: int, heads: int, diff: bool, fused: tuple[str, str, str]
) -> dict[str, Rule]:
    """Attention keys. ``fused`` names the baseline's (qkv weight, qkv bias, out projection)."""
    rules: dict[str, Rule] = {}
    if diff:
        for name, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")):
            rules.update(linear_rules(f"{prefix}.{name}", target + (ours,), width, width))
        d = width // heads
        rules[f"{prefix}.diff_norm.weight"] = ((2 * d,), [(target + ("subln_scale",), identity)])
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            rules[f"{prefix}.{name}"] = ((d,), [(target + (name,), identity)])
        return rules
    qkv_weight, qkv_bias, out = fused
    qkv = ("q", "k", "v")
    rules[f"{prefix}.{qkv_weight}"] = (
        (3 * width, width),
        [(target + (n, "kernel"), rows(i, 3)) for i, n in enumerate(qkv)],
    )
    rules[f"{prefix}.{qkv_bias}"] = (
        (3 * width,),
        [(target + (n, "bias"), rows(i, 3)) for i, n in enumerate(qkv)],
    )
    rules.update(linear_rules(f"{prefix}.{out}", target + ("out",), width, width))
    return rules


LAYOUTS = ("slip", "openai", "hf")
# Hugging Face CLIPModel buffers of the released files that are not parameters (0..N-1).
HF_POSITION_IDS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _reshape(*shape: int):
    def take(w: np.ndarray) -> np.ndarray:
        return w.reshape(shape)

    return take


def _slip_vision_rules(c: CLIPConfig, num_tokens: int) -> dict[str, Rule]:
    """SLIP / DiffCLIP image tower: a timm ViT under ``visual.`` and ``image_projection``."""
    diff = c.attention == "diff"
    vw, p = c.vision_width, c.patch_size
    vhidden = int(round(vw * c.vision_mlp_ratio))
    v: Path = ("visual",)
    rules: dict[str, Rule] = {
        "visual.cls_token": ((1, 1, vw), [(v + ("cls_token",), identity)]),
        "visual.pos_embed": ((1, num_tokens, vw), [(v + ("pos_embed",), identity)]),
        "visual.patch_embed.proj.weight": (
            (vw, c.channels, p, p),
            [(v + ("patch_embed", "kernel"), conv_to_dense)],
        ),
        "visual.patch_embed.proj.bias": ((vw,), [(v + ("patch_embed", "bias"), identity)]),
        "image_projection": ((vw, c.embed_dim), [(v + ("head", "kernel"), identity)]),
    }
    rules.update(norm_rules("visual.norm", v + ("norm",), vw))
    for i in range(c.vision_layers):
        src, dst = f"visual.blocks.{i}", v + ("blocks", i)
        rules.update(norm_rules(f"{src}.norm1", dst + ("norm1",), vw))
        rules.update(norm_rules(f"{src}.norm2", dst + ("norm2",), vw))
        fused = ("qkv.weight", "qkv.bias", "proj")
        rules.update(_attention_rules(f"{src}.attn", dst + ("attn",), vw, c.vision_heads, diff,
                                      fused))  # fmt: skip
        rules.update(linear_rules(f"{src}.mlp.fc1", dst + ("fc1",), vw, vhidden))
        rules.update(linear_rules(f"{src}.mlp.fc2", dst + ("fc2",), vhidden, vw))
    return rules


def _openai_vision_rules(c: CLIPConfig, num_tokens: int) -> dict[str, Rule]:
    """OpenAI / open_clip ``VisionTransformer``: ``class_embedding``, bias-free ``conv1``,
    ``ln_pre``, ``transformer.resblocks`` (``nn.MultiheadAttention``), ``ln_post``, ``proj``."""
    vw, p = c.vision_width, c.patch_size
    vhidden = int(round(vw * c.vision_mlp_ratio))
    v: Path = ("visual",)
    rules: dict[str, Rule] = {
        "visual.class_embedding": ((vw,), [(v + ("cls_token",), _reshape(1, 1, vw))]),
        "visual.positional_embedding": (
            (num_tokens, vw),
            [(v + ("pos_embed",), _reshape(1, num_tokens, vw))],
        ),
        "visual.conv1.weight": (
            (vw, c.channels, p, p),
            [(v + ("patch_embed", "kernel"), conv_to_dense)],
        ),
        "visual.proj": ((vw, c.embed_dim), [(v + ("head", "kernel"), identity)]),
    }
    rules.update(norm_rules("visual.ln_pre", v + ("ln_pre",), vw))
    rules.update(norm_rules("visual.ln_post", v + ("norm",), vw))
    for i in range(c.vision_layers):
        src, dst = f"visual.transformer.resblocks.{i}", v + ("blocks", i)
        rules.update(_resblock_rules(src, dst, vw, c.vision_heads, vhidden, ("fc1", "fc2"),
                                     ("norm1", "norm2"), False))  # fmt: skip
    return rules


def _hf_tower_rules(src: str, dst: Path, width: int, hidden: int, layers: int, mlp, norms):
    """The ``encoder.layers.{i}`` of a Hugging Face CLIP tower (layer_norm1, self_attn.{q,k,v,
    out}_proj, layer_norm2, mlp.fc1/fc2) → a diffjax tower's blocks (norms and MLP named
    ``norms`` and ``mlp``)."""
    rules: dict[str, Rule] = {}
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}", dst + ("blocks", i)
        rules.update(norm_rules(f"{s}.layer_norm1", d + (norms[0],), width))
        rules.update(norm_rules(f"{s}.layer_norm2", d + (norms[1],), width))
        for n in ("q", "k", "v", "out"):
            rules.update(linear_rules(f"{s}.self_attn.{n}_proj", d + ("attn", n), width, width))
        rules.update(linear_rules(f"{s}.mlp.fc1", d + (mlp[0],), width, hidden))
        rules.update(linear_rules(f"{s}.mlp.fc2", d + (mlp[1],), hidden, width))
    return rules


def _hf_rules(c: CLIPConfig, num_tokens: int) -> dict[str, Rule]:
    """Hugging Face ``CLIPModel``: ``vision_model`` (class_embedding, bias-free patch_embedding,
    pre_layrnorm, encoder, post_layernorm), ``visual_projection``, ``text_model``
    (token/position embeddings, causal encoder, final_layer_norm), ``text_projection``
    (projections are bias-free Linear layers: transposed), ``logit_scale``."""
    vw, tw, p = c.vision_width, c.text_width, c.patch_size
    v: Path = ("visual",)
    e = "vision_model.embeddings"
    rules: dict[str, Rule] = {
        f"{e}.class_embedding": ((vw,), [(v + ("cls_token",), _reshape(1, 1, vw))]),
        f"{e}.position_embedding.weight": (
            (num_tokens, vw),
            [(v + ("pos_embed",), _reshape(1, num_tokens, vw))],
        ),
        f"{e}.patch_embedding.weight": (
            (vw, c.channels, p, p),
            [(v + ("patch_embed", "kernel"), conv_to_dense)],
        ),
        "text_projection.weight": ((c.embed_dim, tw), [(("text", "projection"), transpose)]),
    }
    t = "text_model.embeddings."
    rules.update(_text_embedding_rules(c, f"{t}token_embedding.weight",
                                       f"{t}position_embedding.weight"))  # fmt: skip
    rules.update(linear_rules("visual_projection", v + ("head",), vw, c.embed_dim, bias=False))
    rules.update(norm_rules("vision_model.pre_layrnorm", v + ("ln_pre",), vw))
    rules.update(norm_rules("vision_model.post_layernorm", v + ("norm",), vw))
    rules.update(norm_rules("text_model.final_layer_norm", ("text", "ln_final"), tw))
    rules.update(
        _hf_tower_rules(
            "vision_model",
            v,
            vw,
            int(round(vw * c.vision_mlp_ratio)),
            c.vision_layers,
            ("fc1", "fc2"),
            ("norm1", "norm2"),
        )
    )
    rules.update(
        _hf_tower_rules(
            "text_model",
            ("text",),
            tw,
            int(round(tw * c.text_mlp_ratio)),
            c.text_layers,
            ("c_fc", "c_proj"),
            ("ln_1", "ln_2"),
        )
    )
    return rules  # fmt: skip


def hf_config(d: Mapping, mean, std) -> CLIPConfig:
    """The :class:`CLIPConfig` of a Hugging Face ``CLIPModel`` ``config.json`` (``d``), with the
    image statistics of its ``preprocessor_config.json``.

    Raises:
      ConversionError: not a CLIP config, or an activation diffjax does not model.
    """
    if d.get("model_type") != "clip" or not {"text_config", "vision_config"} <= set(d):
        raise ConversionError(
            f"not a Hugging Face CLIPModel config.json (model_type {d.get('model_type')!r})"
        )
    t, v = d["text_config"], d["vision_config"]
    acts = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
            "gelu_new": "gelu_tanh"}  # fmt: skip
    # diffjax pools the text at argmax(token id), which is transformers' rule for the legacy
    # eos_token_id 2 and its first-EOT rule when EOT is the largest id (the CLIP vocabulary).
    eos, vocab = t.get("eos_token_id", 2), int(t.get("vocab_size", 49408))
    if eos not in (2, vocab - 1):
        raise ConversionError(f"text_config.eos_token_id {eos} is not the largest id "
                              f"{vocab - 1}: its EOT pooling is not modelled")  # fmt: skip
    fields = {}
    for name, tower in (("text", t), ("vision", v)):
        act = tower.get("hidden_act", "quick_gelu")
        if act not in acts:
            raise ConversionError(f"{name}_config.hidden_act {act!r} is not one of {sorted(acts)}")
        width = int(tower["hidden_size"])
        fields |= {f"{name}_width": width, f"{name}_layers": int(tower["num_hidden_layers"]),
                   f"{name}_heads": int(tower["num_attention_heads"]),
                   f"{name}_mlp_ratio": int(tower["intermediate_size"]) / width,
                   f"{name}_ln_eps": float(tower.get("layer_norm_eps", 1e-5)),
                   f"{name}_activation": acts[act]}  # fmt: skip
    return CLIPConfig(
        embed_dim=int(d.get("projection_dim", 512)),
        image_size=int(v["image_size"]),
        patch_size=int(v["patch_size"]),
        channels=int(v.get("num_channels", 3)),
        context_length=int(t.get("max_position_embeddings", 77)),
        vocab_size=vocab,
        attention="softmax",
        mean=tuple(mean),
        std=tuple(std),
        **fields,
        vision_ln_pre=True,
        vision_patch_bias=False,
    )


def drop_position_ids(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` without a Hugging Face CLIP's ``position_ids`` buffers (in older releases'
    files), each checked to be 0..N-1: diffjax's positions are always those."""
    out = dict(state)
    for key in HF_POSITION_IDS:
        if key in out:
            ids = np.asarray(out.pop(key)).reshape(-1)
            if not np.array_equal(ids, np.arange(ids.size)):
                raise ConversionError(f"{key} is not 0..{ids.size - 1}: positions not modelled")
    return out


def _resblock_rules(src, dst, width, heads, hidden, mlp, norms, diff) -> dict[str, Rule]:
    """An OpenAI ``ResidualAttentionBlock`` (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj) → a diffjax
    block whose norms and MLP layers are named ``norms`` and ``mlp``."""
    rules = norm_rules(f"{src}.ln_1", dst + (norms[0],), width)
    rules.update(norm_rules(f"{src}.ln_2", dst + (norms[1],), width))
    fused = ("in_proj_weight", "in_proj_bias", "out_proj")
    rules.update(_attention_rules(f"{src}.attn", dst + ("attn",), width, heads, diff, fused))
    rules.update(linear_rules(f"{src}.mlp.c_fc", dst + (mlp[0],), width, hidden))
    rules.update(linear_rules(f"{src}.mlp.c_proj", dst + (mlp[1],), hidden, width))
    return rules


def _text_embedding_rules(c: CLIPConfig, token: str, position: str) -> dict[str, Rule]:
    """The token and position embeddings (keys ``token``, ``position``) and the logit scale."""
    tw = c.text_width
    return {
        token: ((c.vocab_size, tw), [(("text", "token_embedding", "embedding"), identity)]),
        position: ((c.context_length, tw), [(("text", "positional_embedding"), identity)]),
        "logit_scale": ((), [(("logit_scale",), identity)]),
    }


def _text_rules(c: CLIPConfig) -> dict[str, Rule]:
    """The text tower and logit scale: the same keys in the SLIP and OpenAI layouts."""
    tw = c.text_width
    thidden = int(round(tw * c.text_mlp_ratio))
    rules: dict[str, Rule] = {
        "text_projection": ((tw, c.embed_dim), [(("text", "projection"), identity)]),
    }
    rules.update(_text_embedding_rules(c, "token_embedding.weight", "positional_embedding"))
    rules.update(norm_rules("ln_final", ("text", "ln_final"), tw))
    for i in range(c.text_layers):
        rules.update(_resblock_rules(f"transformer.resblocks.{i}", ("text", "blocks", i), tw,
                                     c.text_heads, thidden, ("c_fc", "c_proj"), ("ln_1", "ln_2"),
                                     c.attention == "diff"))  # fmt: skip
    return rules


def conversion_rules(config: CLIPConfig, layout: str = "slip") -> dict[str, Rule]:
    """For every torch key of ``layout``: its shape and where it goes in diffjax.

    Args:
      layout: ``"slip"`` (SLIP / DiffCLIP releases: a timm ViT image tower), ``"openai"``
        (OpenAI CLIP and open_clip ``CLIP`` state dicts) or ``"hf"`` (Hugging Face
        ``CLIPModel``); the last two have softmax attention only.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    c = config
    num_tokens = (c.image_size // c.patch_size) ** 2 + 1
    if layout == "hf":
        if c.attention != "softmax":
            raise ConversionError("the Hugging Face CLIPModel layout has softmax attention only")
        return _hf_rules(c, num_tokens)
    if layout == "openai":
        if c.attention != "softmax":
            raise ConversionError("the OpenAI / open_clip layout has softmax attention only")
        rules = _openai_vision_rules(c, num_tokens)
    else:
        rules = _slip_vision_rules(c, num_tokens)
    rules.update(_text_rules(c))
    return rules


def detect_layout(state: Mapping[str, np.ndarray]) -> str:
    """``"hf"`` for a Hugging Face ``CLIPModel`` (``vision_model.*``), ``"openai"`` if the image
    tower is OpenAI / open_clip's (``visual.conv1.weight``), else ``"slip"``."""
    if "vision_model.embeddings.class_embedding" in state:
        return "hf"
    return "openai" if "visual.conv1.weight" in state else "slip"


def openai_shapes(
    state: Mapping[str, np.ndarray],
    config: CLIPConfig,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPConfig:
    """``config`` with the sizes an OpenAI / open_clip state dict holds: embedding width, image
    and patch size, both towers' width, depth and MLP ratio, context length and vocabulary
    (ViT-B/32, L/14@336px, H/14, … and reduced test models then convert with the activation,
    eps and statistics of a preset). Head counts are not in the weights: ``vision_heads`` /
    ``text_heads``, by default the preset's where the tower has the preset's width; a tower of
    another width needs its count given (open_clip's head width is 64 up to L/14 but 80 for
    H/14, 88 for g/14 and 104 for bigG/14: no rule of thumb is safe).

    Raises:
      ConversionError: a key the sizes are read from is missing, or a width is not divisible
        by its head count.
    """
    need = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
            "visual.transformer.resblocks.0.mlp.c_fc.weight", "token_embedding.weight",
            "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight")  # fmt: skip
    missing = [k for k in need if k not in state]
    if missing:
        raise ConversionError(f"not an OpenAI / open_clip CLIP state dict: no {missing}")

    def depth(prefix: str) -> int:
        blocks = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)}
        return len({b for b in blocks if b.isdigit()})

    vw, channels, patch, _ = state["visual.conv1.weight"].shape
    tokens = state["visual.positional_embedding"].shape[0] - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConversionError(f"visual.positional_embedding has {tokens} patch rows: not a square")
    context, tw = state["positional_embedding"].shape
    heads = {}
    for name, width, given in (("vision", vw, vision_heads), ("text", tw, text_heads)):
        if given is None:
            preset_width = getattr(config, f"{name}_width")
            if width != preset_width:
                raise ConversionError(
                    f"the {name} tower is {width} wide, the preset's {preset_width}: give the "
                    f"{name} head count (it is not in the weights)"
                )
            given = getattr(config, f"{name}_heads")
        if given < 1 or width % given:
            raise ConversionError(f"{name} width {width} is not divisible by {given} heads")
        heads[name] = given
    return config.replace(
        embed_dim=state["visual.proj"].shape[1],
        image_size=side * patch,
        patch_size=patch,
        channels=channels,
        vision_width=vw,
        vision_layers=depth("visual.transformer.resblocks."),
        vision_heads=heads["vision"],
        vision_mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vw,
        context_length=context,
        vocab_size=state["token_embedding.weight"].shape[0],
        text_width=tw,
        text_layers=depth("transformer.resblocks."),
        text_heads=heads["text"],
        text_mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / tw,
    )


def check_state_dict(state: Mapping[str, np.ndarray], config: CLIPConfig) -> None:
    """Raise :class:`ConversionError` listing every missing key, extra key and wrong shape (the
    layout is read from the keys: :func:`detect_layout`)."""
    layout = detect_layout(state)
    kind = "DiffCLIP" if config.attention == "diff" else "CLIP"
    check_rules(state, conversion_rules(config, layout), f"{kind} model ({layout} layout) of this "
                f"config", f"\n  config: {config}")  # fmt: skip


def convert_state_dict(state: Mapping[str, np.ndarray], config: CLIPConfig, seed: int = 0) -> CLIP:
    """A :class:`CLIP` of ``config`` holding the weights of a (prefix-free) torch state dict.

    Linear weights (out, in) become Dense kernels (in, out); the patch-embedding convolution
    becomes the patch Dense in (kh, kw, C) order; fused baseline ``qkv`` / ``in_proj`` rows
    [q; k; v] are split; ``image_projection`` (OpenAI: ``visual.proj``) and ``text_projection``
    are used as x @ W and are not transposed; both layouts (:func:`detect_layout`) are accepted;
    parameters stay float32. λ_init, eps values, masks and activations are not in the checkpoint:
    they come from ``config``.

    Raises:
      ConversionError: keys or shapes do not match (see :func:`check_state_dict`).
    """
    layout = detect_layout(state)
    if layout == "hf":
        state = drop_position_ids(state)
    check_state_dict(state, config)
    rules = conversion_rules(config, layout)
    return load_into(CLIP(config, rngs=nnx.Rngs(seed)), state, rules)


def convert_checkpoint(path: str | os.PathLike, config: CLIPConfig, progress: bool = False) -> CLIP:
    """:func:`diffjax.torch_weights.read_weights` (``.pt``/``.bin``/``.safetensors``) then
    :func:`convert_state_dict`."""
    return convert_state_dict(read_weights(path, progress=progress), config)


def detect_attention(state: Mapping[str, np.ndarray]) -> str:
    """``"diff"`` if the state dict has Differential Attention tensors, else ``"softmax"``."""
    return "diff" if any(k.endswith(".attn.diff_norm.weight") for k in state) else "softmax"
