"""timm and Hugging Face ViT / DINOv2 checkpoints → a diffjax :class:`~diffjax.vit.ViT`, without
torch.

    state = read_weights("model.safetensors")            # or pytorch_model.bin / .pt / .pth
    config = infer_config(state, num_heads=12, mean=..., std=...)   # the rest from the keys
    model = convert_vit(state, config)                   # strict: every key, every shape

Four key layouts are read (:func:`detect_layout`):

* ``"timm"``: ``VisionTransformer`` (``vit_*_patch*_*``, DeiT, DeiT distilled, DINOv2 with and
  without registers, SigLIP's attention-pool towers, qk-norm, SwiGLU): ``cls_token``,
  ``reg_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv,
  attn.q_norm, attn.k_norm, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2}``, ``norm`` (or
  ``fc_norm`` with average pooling, ``attn_pool`` with MAP pooling), ``head`` (absent: a
  headless backbone); optionally ``norm_pre`` (→ ``ln_pre``), ``dist_token`` and ``head_dist``.
  timm's ``Eva`` (EVA-02) is renamed into it (:func:`eva_as_timm`); its rotary positions are
  not in the weights and are given to :func:`infer_config` (``rope_base``, ``rope_ref_grid``).
  The verification-friendly variant with BatchNorm in place of every LayerNorm
  (``norm="batchnorm"``) has ``{weight, bias, running_mean, running_var}`` under the same names
  (PyTorch's integer ``num_batches_tracked`` counters are dropped).
* ``"hf"``: Hugging Face ``ViTForImageClassification``: ``vit.embeddings.*``,
  ``vit.encoder.layer.{i}.{layernorm_before, attention.attention.{query, key, value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense}``,
  ``vit.layernorm``, ``classifier``.
* ``"hf_dinov2"``: Hugging Face ``Dinov2Model`` (headless): ``embeddings.*``,
  ``encoder.layer.{i}.{norm1, attention.attention.*, attention.output.dense, layer_scale1,
  norm2, mlp.fc1/fc2 or mlp.weights_in/weights_out, layer_scale2}``, ``layernorm``.
* ``"hf_siglip"``: Hugging Face ``SiglipVisionModel`` (``vision_model.`` before transformers
  5): ``embeddings.{patch_embedding, position_embedding}``, ``encoder.layers.{i}.{layer_norm1,
  self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1/fc2}``, ``post_layernorm``, the pooling
  ``head.{probe, attention.in_proj_*, attention.out_proj, layernorm, mlp}``: renamed to timm's
  SigLIP names (:func:`siglip_as_timm`) and read by the timm rules.

Released files use those names; transformers ≥ 5 names its in-memory modules otherwise
(``vit.layers.{i}.attention.q_proj`` …, a Dinov2 SwiGLU's ``gate_proj``/``up_proj``), and
:func:`released_hf_names` maps them back.

What the weights do not say (heads, LayerNorm eps, activation, image statistics) is given to
:func:`infer_config`; eps and activation default to each library's (timm: eps 1e-6; Hugging
Face ViT: 1e-12; Dinov2: 1e-6); the statistics have no default. A different ``image_size``
resamples the patch position embeddings as timm does (:func:`resample_pos_embed`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from diffjax.config import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, ViTConfig
from diffjax.torch_weights import (
    ConversionError,
    Path,
    Rule,
    batchnorm_rules,
    check_state_dict,
    conv_to_dense,
    drop_batch_counts,
    identity,
    linear_rules,
    load_into,
    norm_rules,
    rows,
)
from diffjax.vit import ViT

LAYOUTS = ("timm", "hf", "hf_dinov2")
# Keys only timm's ``Eva`` (EVA, EVA-02) writes: split q/v biases, unfused q/k/v, the unpacked
# SwiGLU and its inner norm, its LayerScale names, the attention's inner norm and gate.
EVA_KEYS = (
    r"^blocks\.\d+\.(attn\.(q_bias|v_bias|q_proj|k_proj|v_proj|norm|gate)|"
    r"mlp\.(fc1_g|fc1_x|norm)|gamma_[12])\b"
)
# timm Eva keys with no diffjax counterpart: refused by name (canonical_state).
_EVA_UNMODELLED = {
    "attn.norm": "scale_attn_inner (a LayerNorm on the attention's output before proj)",
    "attn.gate": "gated_attn (a sigmoid gate on the attention's output)",
}
# Read by renaming into another layout (:func:`canonical_state`): not a set of rules of its own.
RENAMED_LAYOUTS = ("hf_siglip",)
# Each library's defaults for what the weights do not hold (the statistics are not among them:
# infer_config wants them given, see there).
LIBRARY_DEFAULTS = {
    "timm": dict(layer_norm_eps=1e-6),
    "hf": dict(layer_norm_eps=1e-12),
    "hf_dinov2": dict(layer_norm_eps=1e-6),
    "hf_siglip": dict(layer_norm_eps=1e-6, activation="gelu_tanh"),
}
# Each library's defaults for the image statistics (timm's ImageNet, Hugging Face ViT's 0.5,
# DINOv2's ImageNet): what the user may choose to assume when the checkpoint does not say.
LIBRARY_STATS = {
    "timm": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "hf": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD),
    "hf_dinov2": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "hf_siglip": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD),
}


def _rename(state: Mapping[str, np.ndarray], patterns) -> dict[str, np.ndarray]:
    """``state`` with each key renamed by the first of ``patterns`` (regex, replacement) that
    matches; other keys unchanged."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in patterns:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        if new in out:
            raise ConversionError(f"keys {key!r} and another both name {new!r}")
        out[new] = value
    return out


# transformers >= 5 module names → the names of the released ViT checkpoints.
_HF5_NAMES = (
    (
        r"^vit\.layers\.(\d+)\.attention\.q_proj\.",
        r"vit.encoder.layer.\1.attention.attention.query.",
    ),
    (r"^vit\.layers\.(\d+)\.attention\.k_proj\.", r"vit.encoder.layer.\1.attention.attention.key."),
    (
        r"^vit\.layers\.(\d+)\.attention\.v_proj\.",
        r"vit.encoder.layer.\1.attention.attention.value.",
    ),
    (r"^vit\.layers\.(\d+)\.attention\.o_proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
    (r"^vit\.layers\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
    (r"^vit\.layers\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
    (r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
)
# transformers >= 5 Dinov2Model module names → the released checkpoints' (facebook/dinov2-*).
_DINOV2_HF5_NAMES = (
    (r"^(encoder\.layer\.\d+\.attention\.)q_proj\.", r"\1attention.query."),
    (r"^(encoder\.layer\.\d+\.attention\.)k_proj\.", r"\1attention.key."),
    (r"^(encoder\.layer\.\d+\.attention\.)v_proj\.", r"\1attention.value."),
    (r"^(encoder\.layer\.\d+\.attention\.)o_proj\.", r"\1output.dense."),
    (r"^(encoder\.layer\.\d+\.mlp\.)down_proj\.", r"\1weights_out."),
)


def released_hf_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` with transformers ≥ 5 ViT / Dinov2 module names renamed to the released
    checkpoints' (``vit.encoder.layer.{i}.attention.attention.query`` …; a Dinov2 SwiGLU's
    ``gate_proj`` and ``up_proj`` joined, in that order, into the released ``weights_in``);
    other keys unchanged."""
    if not any(k.startswith("encoder.layer.") for k in state):
        return _rename(state, _HF5_NAMES)
    state = dict(state)
    gates = [k for k in state if re.match(r"^encoder\.layer\.\d+\.mlp\.gate_proj\.", k)]
    for gate in gates:
        up = gate.replace(".gate_proj.", ".up_proj.")
        if up not in state:
            raise ConversionError(f"{gate} has no {up} to make the SwiGLU's weights_in with")
        joined = np.concatenate([state.pop(gate), state.pop(up)], axis=0)
        state[gate.replace(".gate_proj.", ".weights_in.")] = joined
    return _rename(state, _DINOV2_HF5_NAMES)


def _siglip_prefix(state: Mapping[str, np.ndarray]) -> str | None:
    """The key prefix of a Hugging Face ``SiglipVisionModel`` (``"vision_model."`` as
    transformers < 5 saves it, ``""`` as ≥ 5 does), or ``None``: not one. A CLIP vision tower has
    the same patch and position names but a class embedding."""
    for prefix in ("vision_model.", ""):
        e = prefix + "embeddings."
        if {e + "patch_embedding.weight", e + "position_embedding.weight"} <= set(state) and (
            e + "class_embedding" not in state
        ):
            return prefix
    return None


def siglip_as_timm(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Hugging Face ``SiglipVisionModel`` state dict under the names and shapes of timm's SigLIP
    ``VisionTransformer`` (no class token, ``attn_pool``), which compute the same function:
    ``q_proj``/``k_proj``/``v_proj`` stacked into ``qkv``, the position table [N, D] as
    [1, N, D], ``post_layernorm`` → ``norm``, and the pooling head (``head.probe``, the
    ``nn.MultiheadAttention`` whose ``in_proj`` rows are [q; k; v], ``head.layernorm``,
    ``head.mlp``) → ``attn_pool.{latent, q, kv, proj, norm, mlp}``.

    Raises:
      ConversionError: both towers of a ``SiglipModel``, or a tower without its head
        (``vision_use_head=False``: no pooled output).
    """
    prefix = _siglip_prefix(state)
    if prefix is None:
        raise ConversionError("not a Hugging Face SiglipVisionModel state dict")
    if any(k.startswith("text_model.") for k in state):
        raise ConversionError("a SiglipModel state dict (image and text towers): import-vit reads "
                              "the image tower alone, a SiglipVisionModel checkpoint")  # fmt: skip
    s = {k[len(prefix):]: v for k, v in state.items()}  # fmt: skip
    if "head.probe" not in s:
        raise ConversionError("a SiglipVisionModel without its attention-pool head "
                              "(vision_use_head=False) has no pooled output to import")  # fmt: skip
    w = s["head.probe"].shape[-1]
    out = {
        "patch_embed.proj.weight": s.pop("embeddings.patch_embedding.weight"),
        "pos_embed": s.pop("embeddings.position_embedding.weight")[None],
        "attn_pool.latent": s.pop("head.probe"),
    }
    for t in ("weight", "bias"):
        if f"embeddings.patch_embedding.{t}" in s:
            out[f"patch_embed.proj.{t}"] = s.pop(f"embeddings.patch_embedding.{t}")
        fused = s.pop(f"head.attention.in_proj_{t}")
        out[f"attn_pool.q.{t}"], out[f"attn_pool.kv.{t}"] = fused[:w], fused[w:]
    i = 0
    while f"encoder.layers.{i}.self_attn.q_proj.weight" in s:
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            qkv = [s.pop(f"{src}self_attn.{n}_proj.{t}", None) for n in "qkv"]
            if all(x is not None for x in qkv):
                out[f"{dst}attn.qkv.{t}"] = np.concatenate(qkv, axis=0)
            elif any(x is not None for x in qkv):
                raise ConversionError(f"{src}self_attn: q/k/v_proj.{t} present for some only")
        i += 1
    patterns = (
        (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
        (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
        (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
        (r"^post_layernorm\.", "norm."),
        (r"^head\.attention\.out_proj\.", "attn_pool.proj."),
        (r"^head\.layernorm\.", "attn_pool.norm."),
        (r"^head\.mlp\.", "attn_pool.mlp."),
    )
    return out | _rename(s, patterns)


def is_eva(state: Mapping[str, np.ndarray]) -> bool:
    """Whether a timm state dict has keys only timm's ``Eva`` writes (:data:`EVA_KEYS`). An
    EVA-02 with ``qkv_bias=False`` and a packed SwiGLU has none: its hub config.json says it."""
    return any(re.match(EVA_KEYS, k) for k in state)


def eva_as_timm(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A timm ``Eva`` state dict under the names of timm's ``VisionTransformer``, which compute
    the same function once the config has EVA-02's rotary positions (``rope_base``) and
    ``mlp_norm``: ``attn.q_bias``/``attn.v_bias`` (EVA has no k bias) → ``attn.qkv.bias`` with
    zeros for k; unfused ``attn.{q,k,v}_proj`` → ``attn.qkv`` (k's bias zero); the unpacked
    SwiGLU's ``mlp.fc1_g``, ``mlp.fc1_x`` → ``mlp.fc1`` rows [gate; value];
    ``gamma_1``/``gamma_2`` → ``ls1.gamma``/``ls2.gamma``; ``mlp.norm`` kept.

    Raises:
      ConversionError: a switch diffjax does not model (:data:`_EVA_UNMODELLED`, named), or an
        incomplete pair of keys.
    """
    for part, what in _EVA_UNMODELLED.items():
        found = sorted(k for k in state if re.match(rf"^blocks\.\d+\.{re.escape(part)}\.", k))
        if found:
            raise ConversionError(f"a timm EVA ViT with {what}, {found[0]}: not modelled by "
                                  "diffjax")  # fmt: skip
    s = dict(state)

    def take(key: str) -> np.ndarray:
        if key not in s:
            raise ConversionError(f"a timm EVA ViT without {key}")
        return s.pop(key)

    i = 0
    while any(k.startswith(f"blocks.{i}.") for k in s):
        b = f"blocks.{i}."
        if b + "attn.q_bias" in s:
            q = take(b + "attn.q_bias")
            s[b + "attn.qkv.bias"] = np.concatenate([q, np.zeros_like(q), take(b + "attn.v_bias")])
        if b + "attn.q_proj.weight" in s:
            s[b + "attn.qkv.weight"] = np.concatenate(
                [take(b + f"attn.{n}_proj.weight") for n in "qkv"]
            )
            if b + "attn.q_proj.bias" in s:
                q = take(b + "attn.q_proj.bias")
                v = take(b + "attn.v_proj.bias")
                s[b + "attn.qkv.bias"] = np.concatenate([q, np.zeros_like(q), v])
        for t in ("weight", "bias"):
            if b + f"mlp.fc1_g.{t}" in s:
                g = take(b + f"mlp.fc1_g.{t}")
                s[b + f"mlp.fc1.{t}"] = np.concatenate([g, take(b + f"mlp.fc1_x.{t}")])
        for n in "12":
            if b + f"gamma_{n}" in s:
                s[b + f"ls{n}.gamma"] = s.pop(b + f"gamma_{n}")
        i += 1
    return s


def canonical_state(state: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """(the layout whose rules read it, ``state`` in that layout's released names): the
    layout of :func:`detect_layout`, with a Hugging Face SigLIP tower renamed to timm's and
    transformers ≥ 5 names to the released ones."""
    layout = detect_layout(state)
    if layout == "hf_siglip":
        return "timm", siglip_as_timm(state)
    if layout == "timm":
        state = drop_batch_counts(state)
        return layout, eva_as_timm(state) if is_eva(state) else state
    return layout, released_hf_names(state)


def detect_layout(state: Mapping[str, np.ndarray]) -> str:
    """``"hf"``, ``"hf_dinov2"``, ``"hf_siglip"`` or ``"timm"`` from the embedding keys.

    Raises:
      ConversionError: no layout's position and patch embeddings are present.
    """
    if {"vit.embeddings.cls_token", "vit.embeddings.patch_embeddings.projection.weight"} <= set(
        state
    ):
        return "hf"
    if {"embeddings.cls_token", "embeddings.patch_embeddings.projection.weight"} <= set(state):
        return "hf_dinov2"
    if {"pos_embed", "patch_embed.proj.weight"} <= set(state):
        return "timm"
    if _siglip_prefix(state) is not None:
        return "hf_siglip"
    sample = ", ".join(sorted(state)[:6])
    raise ConversionError(
        "not a timm VisionTransformer (pos_embed, patch_embed.proj.weight), a Hugging Face "
        "ViTForImageClassification (vit.embeddings.*), a Hugging Face Dinov2Model "
        "(embeddings.cls_token, …) nor a Hugging Face SiglipVisionModel "
        f"(embeddings.patch_embedding, …) state dict; first keys: {sample}"
    )


def _keys(layout: str) -> dict[str, str]:
    """Names of the tensors :func:`infer_config` reads, in ``layout``."""
    if layout in ("hf", "hf_dinov2"):
        pfx, fc2 = ("vit.", "output.dense") if layout == "hf" else ("", "mlp.fc2")
        layer0 = f"{pfx}encoder.layer.0."
        keys = dict(cls=f"{pfx}embeddings.cls_token", pos=f"{pfx}embeddings.position_embeddings",
                    patch=f"{pfx}embeddings.patch_embeddings.projection.weight",
                    head="classifier.weight", block=pfx + "encoder.layer.{}.",
                    fc2=f"{layer0}{fc2}.weight",
                    qkv_bias=f"{layer0}attention.attention.query.bias",
                    proj_bias=f"{layer0}attention.output.dense.bias")  # fmt: skip
        if layout == "hf_dinov2":
            keys |= dict(gated_fc2=f"{layer0}mlp.weights_out.weight",
                         layer_scale=f"{layer0}layer_scale1.lambda1")  # fmt: skip
        return keys
    return dict(cls="cls_token", pos="pos_embed", patch="patch_embed.proj.weight",
                head="head.weight", block="blocks.{}.", fc1="blocks.0.mlp.fc1.weight",
                fc2="blocks.0.mlp.fc2.weight", qkv_bias="blocks.0.attn.qkv.bias",
                proj_bias="blocks.0.attn.proj.bias", layer_scale="blocks.0.ls1.gamma",
                qk_norm="blocks.0.attn.q_norm.weight", reg="reg_token")  # fmt: skip


def _positions(rows: int, prefix: int, key: str, overrides: Mapping) -> tuple[int, bool]:
    """(grid side, pos_embed_prefix) of a position table of ``rows`` rows before ``prefix``
    prefix tokens; ambiguous when both readings are square grids (then ``overrides`` decide)."""
    readings = [flag for flag, n in ((True, rows - prefix), (False, rows))
                if n > 0 and math.isqrt(n) ** 2 == n and (flag or prefix)]  # fmt: skip
    if "pos_embed_prefix" in overrides:
        flag = overrides["pos_embed_prefix"]
    elif len(readings) == 1:
        flag = readings[0]
    elif not readings:
        raise ConversionError(f"{key} holds {rows} rows: no square patch grid with or without "
                              f"the {prefix} prefix token(s)")  # fmt: skip
    else:
        raise ConversionError(
            f"{key} holds {rows} rows: a square grid with and without the {prefix} prefix "
            "token(s); say which with pos_embed_prefix"
        )
    return _grid(rows - prefix if flag else rows, key), flag


def infer_config(
    state: Mapping[str, np.ndarray],
    num_heads: int,
    image_size: int | None = None,
    **overrides,
) -> ViTConfig:
    """The :class:`ViTConfig` of a timm / Hugging Face ViT or Dinov2 state dict.

    Width, depth, patch size, the checkpoint's image size, classes (0 for a headless backbone),
    MLP ratio and gating, qkv / output / patch biases, ``ln_pre``, ``distillation``, ``pool``,
    the class and register tokens, whether positions cover them, LayerScale and qk-norm are
    read from the keys and shapes; eps defaults to the library's (``LIBRARY_DEFAULTS``) and a
    gated timm MLP to SiLU (SwiGLU, timm's only gated ViT MLP); ``overrides`` set any other
    :class:`ViTConfig` field (``activation``, ``layer_norm_eps``, ``mean``, ``std``, ``dtype``).
    The image statistics are not in the weights and have no default: give ``mean`` and
    ``std`` (``LIBRARY_STATS`` holds each library's usual ones).

    Args:
      num_heads: attention heads (not in the weights).
      image_size: the input size wanted; default the checkpoint's (``grid × patch``). Another
        size resamples the position embeddings in :func:`convert_vit`.

    Raises:
      ConversionError: an unknown layout, a non-square position grid, a pooling diffjax does
        not model.
      ValueError: no ``mean`` / ``std``.
    """
    if "mean" not in overrides or "std" not in overrides:
        raise ValueError(
            "the image mean and std are not in the weights: give them (the checkpoint's "
            "preprocessing config says them; LIBRARY_STATS has each library's usual ones)"
        )
    source = detect_layout(state)
    if source == "timm" and is_eva(state) and "rope_base" not in overrides:
        raise ConversionError(
            "a timm EVA ViT: its rotary positions are not in the weights; give rope_base "
            "(timm's rope_temperature, 10000 for EVA-02; None for EVA-01 without RoPE) and "
            "rope_ref_grid (timm's ref_feat_shape side; None: unscaled)"
        )
    layout, state = canonical_state(state)
    k = _keys(layout)
    width = int(state[k["patch"]].shape[0])
    channels, patch = int(state[k["patch"]].shape[1]), int(state[k["patch"]].shape[2])
    depth = 0
    while any(key.startswith(k["block"].format(depth)) for key in state):
        depth += 1
    timm = layout == "timm"
    class_token = k["cls"] in state
    distillation = timm and "dist_token" in state
    registers = int(state[k["reg"]].shape[1]) if timm and k["reg"] in state else 0
    prefix = int(class_token) + int(distillation) + registers
    grid, pos_prefix = _positions(int(np.shape(state[k["pos"]])[-2]), prefix, k["pos"], overrides)
    if timm and "attn_pool.latent" in state:
        pool = "map"
    elif timm and "fc_norm.weight" in state:
        pool = "mean"
    elif class_token:
        pool = "cls"
    else:
        raise ConversionError(
            "a timm ViT without a class token pools with fc_norm (global_pool='avg') or "
            "attn_pool (global_pool='map') in diffjax; this one has neither"
        )
    gated_fc2 = k.get("gated_fc2") in state
    fc2 = state[k["gated_fc2"] if gated_fc2 else k["fc2"]]
    gate = gated_fc2 or (timm and state[k["fc1"]].shape[0] == 2 * fc2.shape[1])
    qkv_bias, proj_bias = k["qkv_bias"] in state, k["proj_bias"] in state
    fields = dict(
        image_size=grid * patch if image_size is None else image_size,
        patch_size=patch,
        channels=channels,
        num_classes=int(state[k["head"]].shape[0]) if k["head"] in state else 0,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=int(fc2.shape[1]) / width,
        qkv_bias=qkv_bias,
        proj_bias=None if proj_bias == qkv_bias else proj_bias,
        patch_bias=k["patch"][: -len("weight")] + "bias" in state,
        ln_pre=timm and "norm_pre.weight" in state,
        pool=pool,
        distillation=distillation,
        class_token=class_token,
        num_registers=registers,
        pos_embed_prefix=pos_prefix,
        layer_scale=k.get("layer_scale") in state,
        qk_norm=k.get("qk_norm") in state,
        mlp_gate=bool(gate),
        mlp_norm=timm and "blocks.0.mlp.norm.weight" in state,
        norm="batchnorm" if k["block"].format(0) + "norm1.running_mean" in state else "layernorm",
        **LIBRARY_DEFAULTS[source],
        **(dict(activation="silu") if gate else {}),
    )
    return ViTConfig(**(fields | overrides))


def _grid(patches: int, key: str) -> int:
    g = math.isqrt(max(patches, 0))
    if g * g != patches or g == 0:
        raise ConversionError(f"{key} holds {patches} patch positions, not a square grid")
    return g


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64: antialiased bicubic resampling along one axis, the
    ``F.interpolate(mode="bicubic", antialias=True)`` (PIL) rule: a = −0.5 cubic, stretched by
    max(n_in / n_out, 1), taps inside the input only, each row normalised to sum 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        w = _cubic((taps - center + 0.5) / stretch)
        m[i, lo:hi] = w / w.sum()
    return m


def resample_pos_embed(pos: np.ndarray, num_prefix_tokens: int, grid: int) -> np.ndarray:
    """Position embeddings [1, prefix + g², D] → [1, prefix + grid², D] (prefix rows kept, the
    g×g patch grid resampled as timm's ``resample_abs_pos_embed``: antialiased bicubic), in
    float64 then cast back to ``pos.dtype``."""
    prefix, patches = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
    g = _grid(patches.shape[0], "pos_embed")
    m = _resize_matrix(g, grid)
    x = patches.reshape(g, g, -1).astype(np.float64)
    x = np.einsum("ai,ijd,bj->abd", m, x, m).reshape(1, grid * grid, -1)
    return np.concatenate([prefix, x.astype(pos.dtype)], axis=1)


def vit_rules(config: ViTConfig, layout: str) -> dict[str, Rule]:
    """For every key of ``layout`` (``"timm"``, ``"hf"`` or ``"hf_dinov2"``): its shape and
    where it goes."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    c = config
    if c.norm == "batchnorm" and layout != "timm":
        raise ConversionError(
            "a BatchNorm ViT is read in the timm layout only (norm1, norm2, norm)"
        )
    w, p = c.width, c.patch_size
    k = _keys(layout)
    norms = batchnorm_rules if c.norm == "batchnorm" else norm_rules
    rules: dict[str, Rule] = {
        k["pos"]: ((1, c.num_positions, w), [(("pos_embed",), identity)]),
        k["patch"]: ((w, c.channels, p, p), [(("patch_embed", "kernel"), conv_to_dense)]),
    }
    if c.class_token:
        rules[k["cls"]] = ((1, 1, w), [(("cls_token",), identity)])
    if c.num_registers:
        rules["reg_token"] = ((1, c.num_registers, w), [(("reg_token",), identity)])
    if c.patch_bias:
        rules[k["patch"][: -len("weight")] + "bias"] = ((w,), [(("patch_embed", "bias"), identity)])
    final = {"hf": "vit.layernorm", "hf_dinov2": "layernorm"}.get(layout)
    final = final or ("fc_norm" if c.pool == "mean" else "norm")
    rules.update(norms(final, ("norm",), w))
    if c.num_classes:
        head = {"hf": "classifier", "hf_dinov2": "classifier"}.get(layout, "head")
        rules.update(linear_rules(head, ("head",), w, c.num_classes))
    if c.pool == "map":
        rules.update(_attention_pool_rules(w, c.mlp_hidden))
    if c.distillation:
        rules["dist_token"] = ((1, 1, w), [(("dist_token",), identity)])
        rules.update(linear_rules("head_dist", ("head_dist",), w, c.num_classes))
    if c.ln_pre:
        rules.update(norms("norm_pre", ("ln_pre",), w))
    for i in range(c.depth):
        rules.update(_block_rules(k["block"].format(i), ("blocks", i), layout, c))
    return rules


def _fused_rules(key: str, n_in: int, targets: list[Path], bias: bool) -> dict[str, Rule]:
    """A fused Linear ``key`` whose output rows are ``targets``' blocks in order (timm's
    ``qkv``, ``kv``): each Dense kernel (and bias) its block of rows."""
    n = len(targets)
    rules = {
        f"{key}.weight": (
            (n * n_in, n_in),
            [(t + ("kernel",), rows(i, n)) for i, t in enumerate(targets)],
        )
    }
    if bias:
        rules[f"{key}.bias"] = (
            (n * n_in,),
            [(t + ("bias",), rows(i, n)) for i, t in enumerate(targets)],
        )
    return rules  # fmt: skip


def _attention_pool_rules(w: int, hidden: int) -> dict[str, Rule]:
    """timm's ``attn_pool`` (AttentionPoolLatent): latent, q, fused kv [k; v], proj, norm, mlp."""
    dst = ("attn_pool",)
    attn = dst + ("attn",)
    rules = {"attn_pool.latent": ((1, 1, w), [(dst + ("latent",), identity)])}
    rules.update(linear_rules("attn_pool.q", attn + ("q",), w, w))
    rules.update(_fused_rules("attn_pool.kv", w, [attn + ("k",), attn + ("v",)], True))
    rules.update(linear_rules("attn_pool.proj", attn + ("out",), w, w))
    rules.update(norm_rules("attn_pool.norm", dst + ("norm",), w))
    rules.update(linear_rules("attn_pool.mlp.fc1", dst + ("fc1",), w, hidden))
    rules.update(linear_rules("attn_pool.mlp.fc2", dst + ("fc2",), hidden, w))
    return rules


def _block_rules(src: str, dst: Path, layout: str, c: ViTConfig) -> dict[str, Rule]:
    w, hidden, bias = c.width, c.mlp_hidden, c.qkv_bias
    attn = dst + ("attn",)
    if layout == "timm":
        names = dict(norm1="norm1", norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", out="attn.proj",
                     ls1="ls1.gamma", ls2="ls2.gamma")  # fmt: skip
        rules = _fused_rules(f"{src}attn.qkv", w, [attn + (n,) for n in ("q", "k", "v")], bias)
        if c.qk_norm:
            d = w // c.num_heads
            rules.update(norm_rules(f"{src}attn.q_norm", attn + ("q_norm",), d))
            rules.update(norm_rules(f"{src}attn.k_norm", attn + ("k_norm",), d))
    else:
        if layout == "hf":
            names = dict(norm1="layernorm_before", norm2="layernorm_after",
                         fc1="intermediate.dense", fc2="output.dense")  # fmt: skip
        else:
            mlp = ("mlp.weights_in", "mlp.weights_out") if c.mlp_gate else ("mlp.fc1", "mlp.fc2")
            names = dict(norm1="norm1", norm2="norm2", ls1="layer_scale1.lambda1",
                         ls2="layer_scale2.lambda1", fc1=mlp[0], fc2=mlp[1])  # fmt: skip
        names["out"] = "attention.output.dense"
        rules = {}
        for n in ("query", "key", "value"):
            rules.update(linear_rules(f"{src}attention.attention.{n}", attn + (n[0],), w, w, bias))
    rules.update(linear_rules(src + names["out"], attn + ("out",), w, w, c.out_bias))
    norms = batchnorm_rules if c.norm == "batchnorm" else norm_rules
    rules.update(norms(src + names["norm1"], dst + ("norm1",), w))
    rules.update(norms(src + names["norm2"], dst + ("norm2",), w))
    rules.update(linear_rules(src + names["fc1"], dst + ("fc1",), w, hidden * (1 + c.mlp_gate)))
    rules.update(linear_rules(src + names["fc2"], dst + ("fc2",), hidden, w))
    if c.mlp_norm:
        rules.update(norm_rules(src + "mlp.norm", dst + ("mlp_norm",), hidden))
    if c.layer_scale:
        if "ls1" not in names:
            raise ConversionError(f"the {layout} layout has no LayerScale: layer_scale=False")
        rules.update({src + names[n]: ((w,), [(dst + (n,), identity)]) for n in ("ls1", "ls2")})
    return rules


def convert_vit(state: Mapping[str, np.ndarray], config: ViTConfig, seed: int = 0) -> ViT:
    """A :class:`ViT` of ``config`` holding a timm / Hugging Face state dict's weights.

    The position embeddings are resampled first when ``config.image_size`` differs from the
    checkpoint's grid (timm's rule; a Hugging Face Dinov2 interpolates by its own and is
    imported at its checkpoint's size). Fused timm ``qkv`` / ``kv`` rows are split; Linear
    weights are transposed to Dense kernels; parameters stay float32. A Dinov2's
    ``embeddings.mask_token`` (masked-image pretraining only: never used on images) is checked
    for shape and dropped.

    Raises:
      ConversionError: naming every missing, unexpected or wrong-shaped key (e.g. a timm EVA's
        inner attention norm ``attn.norm``, which diffjax does not model).
    """
    source = detect_layout(state)
    layout, state = canonical_state(state)
    if config.attention != "softmax":
        raise ConversionError(
            "timm / Hugging Face ViTs have softmax attention: attention='softmax'"
        )
    if layout == "hf_dinov2" and "embeddings.mask_token" in state:
        mask = state.pop("embeddings.mask_token")
        if tuple(np.shape(mask)) != (1, config.width):
            raise ConversionError(
                f"embeddings.mask_token: {tuple(np.shape(mask))} (expected (1, {config.width}))"
            )
    pos_key = _keys(layout)["pos"]
    pos = np.asarray(state[pos_key])
    grid = config.image_size // config.patch_size
    if pos.ndim == 3 and pos.shape[1] != config.num_positions:
        if layout == "hf_dinov2":
            raise ConversionError(
                f"{pos_key} holds {pos.shape[1]} positions, the config wants "
                f"{config.num_positions}: import a Hugging Face Dinov2 at its checkpoint's image "
                "size (its own interpolation is not timm's)"
            )
        prefix = config.num_prefix_tokens if config.pos_embed_prefix else 0
        state[pos_key] = resample_pos_embed(pos, prefix, grid)
    rules = vit_rules(config, layout)
    what = {
        "hf": "Hugging Face ViT",
        "hf_dinov2": "Hugging Face Dinov2",
        "hf_siglip": "Hugging Face SigLIP vision tower (in timm's names)",
    }.get(source, "timm ViT")
    check_state_dict(state, rules, f"{what} of this config", f"\n  config: {config}")
    return load_into(ViT(config, rngs=nnx.Rngs(seed)), state, rules)
