"""CLIP / DiffCLIP configuration: a frozen dataclass with validation, and the named presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from diffjax.config import (
    ACTIVATIONS,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ViTConfig,
    check_int,
    check_number,
)

# The released DiffCLIP models use λ_init = 0.8 in all 24 DA layers (DiffCLIP, Hammoud & Ghanem
# 2025, arXiv 2503.06626; docs/clip.md, Decisions).
DIFFCLIP_LAMBDA_INIT = 0.8
# Training clamps the log logit scale to [0, ln 100] (SLIP / SynthCLIP).
MAX_LOG_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A two-tower CLIP (``attention="softmax"``) or DiffCLIP (``attention="diff"``) model.

    Attributes:
      embed_dim: joint embedding width E (both projections map to it).
      image_size: input height = width, pixels.
      patch_size: square patch side, pixels; must divide ``image_size``.
      channels: image channels.
      vision_width, vision_layers, vision_heads: image tower D, depth and baseline head count
        H_base (DA layers use H_base / 2 DIFF heads of sub-head dim D / H_base).
      vision_mlp_ratio: image MLP hidden width / D.
      vision_ln_eps: image-tower LayerNorm epsilon (timm ViT baseline 1e-6, DiffCLIP 1e-5).
      context_length: text positions (the released models and the tokenizer: 77).
      vocab_size: token-embedding rows (49,408 for the CLIP BPE vocabulary).
      text_width, text_layers, text_heads: text tower D, depth and baseline head count.
      text_mlp_ratio: text MLP hidden width / D.
      text_ln_eps: text-tower LayerNorm epsilon (1e-5 in both releases).
      attention: ``"softmax"`` (CLIP) or ``"diff"`` (DiffCLIP, DA in every layer of both towers).
      lambda_init: DA λ_init: a constant float (the release: 0.8) or ``"schedule"``
        (0.8 − 0.6·exp(−0.3·l), the paper's DiffCLIP* variant).
      mean, std: per-channel normalisation applied inside the image tower to [0, 1] pixels
        (the releases were trained with ImageNet statistics).
      dtype: compute dtype of matmuls (``"float32"``, ``"bfloat16"``, or ``"float64"``: exact
        evaluation, needs ``jax_enable_x64``).
      vision_activation, text_activation: the MLP activations of the two towers (``"gelu"``,
        ``"gelu_tanh"``, ``"quick_gelu"``; the SLIP/DiffCLIP releases: exact GELU and QuickGELU;
        OpenAI CLIP: QuickGELU in both; open_clip's non-``quickgelu`` models: GELU in both).
      vision_ln_pre: a LayerNorm on the embedded image tokens before the first block (OpenAI /
        open_clip ``ln_pre``).
      vision_patch_bias: a bias on the patch embedding (OpenAI / open_clip ``conv1`` has none).
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_ln_eps: float = 1e-5
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_ratio: float = 4.0
    text_ln_eps: float = 1e-5
    attention: Literal["softmax", "diff"] = "diff"
    lambda_init: str | float = DIFFCLIP_LAMBDA_INIT
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dtype: str = "float32"
    vision_activation: str = "gelu"
    text_activation: str = "quick_gelu"
    vision_ln_pre: bool = False
    vision_patch_bias: bool = True

    def __post_init__(self):
        for name in ("embed_dim", "context_length", "vocab_size", "text_width", "text_layers"):
            check_int(name, getattr(self, name), 1)
        check_int("text_heads", self.text_heads, 1)
        if self.text_width % self.text_heads:
            raise ValueError(
                f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}"
            )
        if self.attention == "diff" and self.text_heads % 2:
            raise ValueError(
                f"DiffCLIP needs an even text_heads (DA heads = text_heads / 2), got "
                f"{self.text_heads}"
            )
        check_number("text_mlp_ratio", self.text_mlp_ratio, 0, low_open=True)
        check_number("text_ln_eps", self.text_ln_eps, 0, low_open=True)
        check_number("vision_ln_eps", self.vision_ln_eps, 0, low_open=True)
        if self.text_activation not in ACTIVATIONS:
            raise ValueError(
                f"text_activation must be one of {ACTIVATIONS}, got {self.text_activation!r}"
            )
        self.vision_config()  # validates the image-tower fields

    def vision_config(self) -> ViTConfig:
        """The image tower as a :class:`ViTConfig` whose "classes" are the E embedding outputs."""
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            channels=self.channels,
            num_classes=self.embed_dim,
            width=self.vision_width,
            depth=self.vision_layers,
            num_heads=self.vision_heads,
            mlp_ratio=self.vision_mlp_ratio,
            attention=self.attention,
            lambda_init=self.lambda_init,
            qkv_bias=True,
            layer_norm_eps=self.vision_ln_eps,
            mean=self.mean,
            std=self.std,
            dtype=self.dtype,
            activation=self.vision_activation,
            ln_pre=self.vision_ln_pre,
            patch_bias=self.vision_patch_bias,
        )

    @property
    def accum_dtype(self) -> str:
        """Dtype of residual streams and norms: float64 in float64 mode, else float32."""
        return self.vision_config().accum_dtype

    def text_lambda_init(self, layer: int) -> float:
        """λ_init of 0-based text ``layer`` (same rule as the image tower)."""
        return self.vision_config().layer_lambda_init(layer)

    def replace(self, **changes) -> CLIPConfig:
        return dataclasses.replace(self, **changes)


_RELEASE = CLIPConfig()
_TINY = dict(
    embed_dim=16,
    image_size=16,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=4,
    text_width=32,
    text_layers=2,
    text_heads=4,
)
_CIFAR = dict(
    embed_dim=128,
    image_size=32,
    patch_size=4,
    vision_width=128,
    vision_layers=4,
    vision_heads=4,
    vision_mlp_ratio=2.0,
    text_width=128,
    text_layers=4,
    text_heads=4,
    text_mlp_ratio=2.0,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
)

# OpenAI CLIP / open_clip layouts (``open_clip.create_model(name)``): ln_pre, no patch bias,
# OpenAI image statistics, LayerNorm eps 1e-5 in both towers. OpenAI's released weights were
# trained with QuickGELU (open_clip's "-quickgelu" names); open_clip's plain names use exact GELU.
_OPENAI = dict(
    attention="softmax",
    vision_ln_eps=1e-5,
    vision_ln_pre=True,
    vision_patch_bias=False,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
)
_B16 = dict(_OPENAI, embed_dim=512, patch_size=16, vision_width=768, vision_layers=12,
            vision_heads=12, text_width=512, text_layers=12, text_heads=8)  # fmt: skip
_L14 = dict(_OPENAI, embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
            vision_heads=16, text_width=768, text_layers=12, text_heads=12)  # fmt: skip
_GELU = dict(vision_activation="gelu", text_activation="gelu")
_QUICK = dict(vision_activation="quick_gelu", text_activation="quick_gelu")

CLIP_PRESETS: dict[str, CLIPConfig] = {
    # The released ViT-B/16 models (hammh0a/ViTB16_CC3M|CC12M and DiffCLIP_ViTB16_CC3M|CC12M).
    "clip_b16": _RELEASE.replace(attention="softmax", vision_ln_eps=1e-6),
    "diffclip_b16": _RELEASE.replace(attention="diff", vision_ln_eps=1e-5),
    # Milliseconds per forward pass, real 77-token context and vocabulary: used by the tests.
    # open_clip "ViT-B-16" / "ViT-L-14" (exact GELU) and "ViT-B-16-quickgelu" /
    # "ViT-L-14-quickgelu" (QuickGELU: the layout of OpenAI's own weights).
    "openclip_b16": _RELEASE.replace(**_B16, **_GELU),
    "openclip_l14": _RELEASE.replace(**_L14, **_GELU),
    "openai_b16": _RELEASE.replace(**_B16, **_QUICK),
    "openai_l14": _RELEASE.replace(**_L14, **_QUICK),
    "tiny": _RELEASE.replace(attention="softmax", **_TINY),
    "tiny_diff": _RELEASE.replace(attention="diff", **_TINY),
    # Small from-scratch training on 32×32 images (CIFAR).
    "cifar": _RELEASE.replace(attention="softmax", **_CIFAR),
    "cifar_diff": _RELEASE.replace(attention="diff", **_CIFAR),
}


def clip_preset(name: str, **changes) -> CLIPConfig:
    """A named CLIP preset (see ``CLIP_PRESETS``) with optional field overrides."""
    if name not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; choose from {sorted(CLIP_PRESETS)}")
    return CLIP_PRESETS[name].replace(**changes)
