"""Saving and loading models with orbax: a model directory holds ``config.json`` and ``params/``.

    save_model(directory, model)      # writes atomically: a crash leaves no half-written model
    model = load_model(directory)     # rebuilds the ViT from its config, restores the parameters

Every failure mode (missing directory, missing or corrupt config, parameters that do not match
the config) raises :class:`CheckpointError` with the path and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from flax import nnx

from diffjax.config import ViTConfig
from diffjax.vit import ViT

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def config_to_dict(config: ViTConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict) -> ViTConfig:
    """Inverse of :func:`config_to_dict` (JSON turns tuples into lists; undo that)."""
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = set(d) - fields
    if unknown:
        raise CheckpointError(f"unknown model config fields {sorted(unknown)}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return ViTConfig(**d)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(directory: str | os.PathLike, model: ViT) -> pathlib.Path:
    """Save ``model`` (config and parameters) to ``directory``, replacing what was there."""
    directory = pathlib.Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        write_json_atomic(tmp / CONFIG_FILE, config_to_dict(model.config))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, nnx.state(model, nnx.Param))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_config(directory: str | os.PathLike) -> ViTConfig:
    """The :class:`ViTConfig` stored in ``directory/config.json``."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {directory}: not a diffjax model directory")
    try:
        d = json.loads(path.read_text())
        return config_from_dict(d["model"] if "model" in d else d)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt or invalid model config {path}: {e}") from e


def restore_params(params_dir: str | os.PathLike, model: ViT) -> ViT:
    """Restore the parameters saved in ``params_dir`` into ``model`` (in place) and return it."""
    params_dir = pathlib.Path(params_dir).absolute()
    if not params_dir.is_dir():
        raise CheckpointError(f"parameter checkpoint {params_dir} does not exist")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.state(model, nnx.Param)
    )
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir, abstract)
    except Exception as e:  # orbax raises many types for truncated or mismatched trees
        raise CheckpointError(
            f"cannot restore parameters from {params_dir} into a model of config "
            f"{model.config}: {type(e).__name__}: {e}"
        ) from e
    nnx.update(model, params)
    return model


def load_model(directory: str | os.PathLike, seed: int = 0) -> ViT:
    """Load a model saved by :func:`save_model`."""
    directory = pathlib.Path(directory)
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    config = read_config(directory)
    model = ViT(config, rngs=nnx.Rngs(seed))
    return restore_params(directory / PARAMS_DIR, model)
