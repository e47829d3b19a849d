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
    "lambda_init_schedule": "diffjax.config",
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


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` of a package whose public names (``exports``: name → the
    module that defines it) are imported on first use (PEP 562): importing the package, or a
    light submodule of it, does not import the heavy ones (JAX)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value  # later look-ups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted([*namespace, *exports])

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
