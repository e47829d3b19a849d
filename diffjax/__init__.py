"""diffjax: exact adversarial sensitivity of Differential Attention, in JAX/Flax.

The names below are imported on first use (PEP 562), so that ``import diffjax.experiments.cli``
(the command line) does not import JAX: ``diffjax --help`` answers at once.
"""

import importlib

__version__ = "0.1.0"

# name → the module that defines it
_EXPORTS = {
    "AttentionMaps": "diffjax.attention",
    "DiffAttention": "diffjax.attention",
    "SoftmaxAttention": "diffjax.attention",
    "diff_attention": "diffjax.attention",
    "diff_lambda": "diffjax.attention",
    "lambda_init_schedule": "diffjax.attention",
    "softmax_attention": "diffjax.attention",
    "PRESETS": "diffjax.config",
    "SIZES": "diffjax.config",
    "ViTConfig": "diffjax.config",
    "preset": "diffjax.config",
    "variant": "diffjax.config",
    "Block": "diffjax.vit",
    "Intermediates": "diffjax.vit",
    "ViT": "diffjax.vit",
    "count_params": "diffjax.vit",
    "functional": "diffjax.vit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
