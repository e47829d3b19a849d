"""CLIP model directories: the layout of :mod:`diffjax.checkpoint` with a :class:`CLIPConfig`.

save_model(directory, clip_model)       # diffjax.checkpoint.save_model works unchanged
model = load_clip(directory)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from flax import nnx

from diffjax.checkpoint import CONFIG_FILE, PARAMS_DIR, CheckpointError, restore_params
from diffjax.clip.config import CLIPConfig
from diffjax.clip.model import CLIP


def read_clip_config(directory: str | os.PathLike) -> CLIPConfig:
    """The :class:`CLIPConfig` stored in ``directory/config.json``."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {directory}: not a diffjax model directory")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt model config {path}: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"corrupt model config {path}: not a JSON object")
    unknown = set(d) - {f.name for f in dataclasses.fields(CLIPConfig)}
    if unknown:
        raise CheckpointError(
            f"{path} is not a CLIP config (unknown fields {sorted(unknown)}); ViT model "
            "directories load with diffjax.checkpoint.load_model"
        )
    try:
        return CLIPConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid CLIP config {path}: {e}") from e


def load_clip(directory: str | os.PathLike, seed: int = 0) -> CLIP:
    """Load a CLIP / DiffCLIP saved with :func:`diffjax.checkpoint.save_model`."""
    directory = pathlib.Path(directory)
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    model = CLIP(read_clip_config(directory), rngs=nnx.Rngs(seed))
    return restore_params(directory / PARAMS_DIR, model)
