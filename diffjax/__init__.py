"""diffjax: exact adversarial sensitivity of Differential Attention, in JAX/Flax."""

from diffjax.attention import (
    AttentionMaps,
    DiffAttention,
    SoftmaxAttention,
    diff_attention,
    diff_lambda,
    lambda_init_schedule,
    softmax_attention,
)
from diffjax.config import PRESETS, SIZES, ViTConfig, preset, variant
from diffjax.vit import Block, Intermediates, ViT, count_params, functional

__version__ = "0.1.0"

__all__ = [
    "AttentionMaps",
    "Block",
    "DiffAttention",
    "Intermediates",
    "PRESETS",
    "SIZES",
    "SoftmaxAttention",
    "ViT",
    "ViTConfig",
    "count_params",
    "diff_attention",
    "diff_lambda",
    "functional",
    "lambda_init_schedule",
    "preset",
    "softmax_attention",
    "variant",
]
