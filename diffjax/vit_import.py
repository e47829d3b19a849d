"""timm and Hugging Face ViT checkpoints → a diffjax :class:`~diffjax.vit.ViT`, without torch.

    state = read_weights("model.safetensors")            # or pytorch_model.bin / .pt / .pth
    config = infer_config(state, num_heads=12)           # shapes from the keys, the rest given
    model = convert_vit(state, config)                   # strict: every key, every shape

Two key layouts are read (:func:`detect_layout`):

* ``"timm"``: ``VisionTransformer`` (``vit_*_patch*_*``, DeiT, DeiT distilled): ``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
  mlp.fc2}``, ``norm`` (or ``fc_norm`` with average pooling), ``head``; optionally ``norm_pre``
  (→ ``ln_pre``), ``dist_token`` and ``head_dist`` (→ ``distillation``). The
  verification-friendly variant with BatchNorm in place of every LayerNorm (``norm="batchnorm"``)
  has ``{weight, bias, running_mean, running_var}`` under the same names (PyTorch's integer
  ``num_batches_tracked`` counters are dropped).
* ``"hf"``: Hugging Face ``ViTForImageClassification``: ``vit.embeddings.*``,
  ``vit.encoder.layer.{i}.{layernorm_before, attention.attention.{query, key, value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense}``,
  ``vit.layernorm``, ``classifier`` (the names of the released files; transformers ≥ 5 names
  its in-memory modules ``vit.layers.{i}.{attention.{q,k,v,o}_proj, mlp.fc1, mlp.fc2}``, and
  :func:`released_hf_names` maps those back).

What the weights do not say (heads, LayerNorm eps, activation, normalisation statistics) is
given to :func:`infer_config`; its defaults are each library's (timm: eps 1e-6, ImageNet mean/std;
Hugging Face: eps 1e-12, mean = std = 0.5). A different ``image_size`` resamples the patch
position embeddings as timm does (:func:`resample_pos_embed`).
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

LAYOUTS = ("timm", "hf")
# Each library's defaults for what the weights do not hold.
LIBRARY_DEFAULTS = {
    "timm": dict(layer_norm_eps=1e-6, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "hf": dict(layer_norm_eps=1e-12, mean=INCEPTION_MEAN, std=INCEPTION_STD),
}


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


def released_hf_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` with transformers ≥ 5 ViT module names renamed to the released checkpoints'
    (``vit.encoder.layer.{i}.attention.attention.query`` …); other keys unchanged."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _HF5_NAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        if new in out:
            raise ConversionError(f"keys {key!r} and another both name {new!r}")
        out[new] = value
    return out


def detect_layout(state: Mapping[str, np.ndarray]) -> str:
    """``"hf"`` or ``"timm"`` from the embedding keys.

    Raises:
      ConversionError: neither layout's class token and patch embedding are present.
    """
    if {"vit.embeddings.cls_token", "vit.embeddings.patch_embeddings.projection.weight"} <= set(
        state
    ):
        return "hf"
    if {"cls_token", "patch_embed.proj.weight"} <= set(state):
        return "timm"
    sample = ", ".join(sorted(state)[:6])
    raise ConversionError(
        "not a timm VisionTransformer (cls_token, patch_embed.proj.weight) nor a Hugging Face "
        f"ViTForImageClassification (vit.embeddings.*) state dict; first keys: {sample}"
    )


def _keys(layout: str) -> dict[str, str]:
    """Names of the tensors :func:`infer_config` reads, in ``layout``."""
    if layout == "hf":
        return dict(cls="vit.embeddings.cls_token", pos="vit.embeddings.position_embeddings",
                    patch="vit.embeddings.patch_embeddings.projection.weight",
                    head="classifier.weight", block="vit.encoder.layer.{}.",
                    fc1="vit.encoder.layer.0.intermediate.dense.weight",
                    qkv_bias="vit.encoder.layer.0.attention.attention.query.bias")  # fmt: skip
    return dict(cls="cls_token", pos="pos_embed", patch="patch_embed.proj.weight",
                head="head.weight", block="blocks.{}.", fc1="blocks.0.mlp.fc1.weight",
                qkv_bias="blocks.0.attn.qkv.bias")  # fmt: skip


def infer_config(
    state: Mapping[str, np.ndarray],
    num_heads: int,
    image_size: int | None = None,
    **overrides,
) -> ViTConfig:
    """The :class:`ViTConfig` of a timm / Hugging Face ViT state dict.

    Width, depth, patch size, the checkpoint's image size, classes, MLP ratio, qkv and patch
    biases, ``ln_pre``, ``distillation``, ``pool`` and ``norm`` are read from the keys and shapes;
    eps and the
    normalisation default to the library's (``LIBRARY_DEFAULTS``); ``overrides`` set any other
    :class:`ViTConfig` field (``activation``, ``layer_norm_eps``, ``mean``, ``std``, ``dtype``).

    Args:
      num_heads: attention heads (not in the weights).
      image_size: the input size wanted; default the checkpoint's (``grid × patch``). Another
        size resamples the position embeddings in :func:`convert_vit`.

    Raises:
      ConversionError: an unknown layout, a non-square position grid, or no classifier head.
    """
    layout = detect_layout(state)
    state = released_hf_names(state) if layout == "hf" else drop_batch_counts(state)
    k = _keys(layout)
    width = int(state[k["cls"]].shape[-1])
    channels, patch = int(state[k["patch"]].shape[1]), int(state[k["patch"]].shape[2])
    depth = 0
    while any(key.startswith(k["block"].format(depth)) for key in state):
        depth += 1
    distillation = layout == "timm" and "dist_token" in state
    prefix = 1 + int(distillation)
    grid = _grid(int(np.shape(state[k["pos"]])[-2]) - prefix, k["pos"])
    if k["head"] not in state:
        raise ConversionError(
            f"no classifier head ({k['head']}): a headless backbone has no logits to analyse"
        )
    fields = dict(
        image_size=grid * patch if image_size is None else image_size,
        patch_size=patch,
        channels=channels,
        num_classes=int(state[k["head"]].shape[0]),
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=int(state[k["fc1"]].shape[0]) / width,
        qkv_bias=k["qkv_bias"] in state,
        patch_bias=k["patch"][: -len("weight")] + "bias" in state,
        ln_pre=layout == "timm" and "norm_pre.weight" in state,
        pool="mean" if layout == "timm" and "fc_norm.weight" in state else "cls",
        distillation=distillation,
        norm="batchnorm" if k["block"].format(0) + "norm1.running_mean" in state else "layernorm",
        **LIBRARY_DEFAULTS[layout],
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
    """For every key of ``layout`` (``"timm"`` or ``"hf"``): its shape and where it goes."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    c = config
    if c.norm == "batchnorm" and layout != "timm":
        raise ConversionError(
            "a BatchNorm ViT is read in the timm layout only (norm1, norm2, norm)"
        )
    w, p, hidden = c.width, c.patch_size, int(round(c.width * c.mlp_ratio))
    k = _keys(layout)
    norms = batchnorm_rules if c.norm == "batchnorm" else norm_rules
    pfx = "vit." if layout == "hf" else ""
    rules: dict[str, Rule] = {
        k["cls"]: ((1, 1, w), [(("cls_token",), identity)]),
        k["pos"]: ((1, c.num_tokens, w), [(("pos_embed",), identity)]),
        k["patch"]: ((w, c.channels, p, p), [(("patch_embed", "kernel"), conv_to_dense)]),
    }
    if c.patch_bias:
        rules[k["patch"][: -len("weight")] + "bias"] = ((w,), [(("patch_embed", "bias"), identity)])
    final = "fc_norm" if c.pool == "mean" else "norm"
    rules.update(norms(f"{pfx}layernorm" if layout == "hf" else final, ("norm",), w))
    head = "classifier" if layout == "hf" else "head"
    rules.update(linear_rules(head, ("head",), w, c.num_classes))
    if c.distillation:
        rules["dist_token"] = ((1, 1, w), [(("dist_token",), identity)])
        rules.update(linear_rules("head_dist", ("head_dist",), w, c.num_classes))
    if c.ln_pre:
        rules.update(norms("norm_pre", ("ln_pre",), w))
    for i in range(c.depth):
        src, dst = k["block"].format(i), ("blocks", i)
        rules.update(_block_rules(src, dst, layout, w, hidden, c.qkv_bias, norms))
    return rules


def _block_rules(src: str, dst: Path, layout: str, w: int, hidden: int, bias: bool, norms):
    attn = dst + ("attn",)
    if layout == "hf":
        names = dict(norm1="layernorm_before", norm2="layernorm_after", fc1="intermediate.dense",
                     fc2="output.dense", out="attention.output.dense")  # fmt: skip
        rules = {}
        for n in ("query", "key", "value"):
            rules.update(linear_rules(f"{src}attention.attention.{n}", attn + (n[0],), w, w, bias))
    else:
        names = dict(norm1="norm1", norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", out="attn.proj")
        qkv = ("q", "k", "v")
        rules = {f"{src}attn.qkv.weight": ((3 * w, w), [(attn + (n, "kernel"), rows(i, 3))
                                                         for i, n in enumerate(qkv)])}  # fmt: skip
        if bias:
            rules[f"{src}attn.qkv.bias"] = ((3 * w,), [(attn + (n, "bias"), rows(i, 3))
                                                       for i, n in enumerate(qkv)])  # fmt: skip
    rules.update(linear_rules(src + names["out"], attn + ("out",), w, w, bias))
    rules.update(norms(src + names["norm1"], dst + ("norm1",), w))
    rules.update(norms(src + names["norm2"], dst + ("norm2",), w))
    rules.update(linear_rules(src + names["fc1"], dst + ("fc1",), w, hidden))
    rules.update(linear_rules(src + names["fc2"], dst + ("fc2",), hidden, w))
    return rules


def convert_vit(state: Mapping[str, np.ndarray], config: ViTConfig, seed: int = 0) -> ViT:
    """A :class:`ViT` of ``config`` holding a timm / Hugging Face state dict's weights.

    The position embeddings are resampled first when ``config.image_size`` differs from the
    checkpoint's grid. Fused timm ``qkv`` rows [q; k; v] are split; Linear weights are
    transposed to Dense kernels; parameters stay float32.

    Raises:
      ConversionError: naming every missing, unexpected or wrong-shaped key (e.g. timm's
        LayerScale ``ls1.gamma`` or register tokens, which diffjax does not model).
    """
    layout = detect_layout(state)
    state = released_hf_names(state) if layout == "hf" else drop_batch_counts(state)
    if config.attention != "softmax":
        raise ConversionError(
            "timm / Hugging Face ViTs have softmax attention: attention='softmax'"
        )
    pos_key = _keys(layout)["pos"]
    pos = np.asarray(state[pos_key])
    grid = config.image_size // config.patch_size
    if pos.ndim == 3 and pos.shape[1] != config.num_tokens:
        state = dict(state, **{pos_key: resample_pos_embed(pos, config.num_prefix_tokens, grid)})
    rules = vit_rules(config, layout)
    what = f"{'Hugging Face' if layout == 'hf' else 'timm'} ViT of this config"
    check_state_dict(state, rules, what, f"\n  config: {config}")
    return load_into(ViT(config, rngs=nnx.Rngs(seed)), state, rules)
