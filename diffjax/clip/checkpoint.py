"""CLIP model directories: the layout of :mod:`diffjax.checkpoint` with a :class:`CLIPConfig`.

save_model(directory, clip_model)       # diffjax.checkpoint.save_model works unchanged
model = load_clip(directory)
"""

from __future__ import annotations

import os
import pathlib

from flax import nnx

from diffjax.checkpoint import PARAMS_DIR, CheckpointError, read_config, restore_params
from diffjax.clip.config import CLIPConfig
from diffjax.clip.model import CLIP


def read_clip_config(directory: str | os.PathLike) -> CLIPConfig:
    """The :class:`CLIPConfig` stored in ``directory/config.json``."""
    return read_config(directory, CLIPConfig)


def load_clip(directory: str | os.PathLike, seed: int = 0) -> CLIP:
    """Load a CLIP / DiffCLIP saved with :func:`diffjax.checkpoint.save_model`."""
    directory = pathlib.Path(directory)
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    model = CLIP(read_clip_config(directory), rngs=nnx.Rngs(seed))
    return restore_params(directory / PARAMS_DIR, model)
