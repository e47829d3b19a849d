"""Saving and loading models and training state with orbax.

    save_model(directory, model)      # writes atomically: a crash leaves no half-written model
    model = load_model(directory)     # rebuilds the ViT from its config, restores the parameters

A *model directory* holds ``config.json`` and ``params/``. A *training run directory* (written by
:func:`diffjax.train.train`) holds ``config.json`` (its ``"model"`` key is the ViT config),
``metrics.jsonl`` and ``checkpoints/<step>/{params,opt_state}``, managed by
:class:`TrainCheckpoints` (keep the last k and the best by test accuracy; saves are atomic).
:func:`load_model` takes any of the three: a model directory, a run directory (best checkpoint,
else the latest) or one ``checkpoints/<step>`` directory.

Every failure mode (missing directory, missing or corrupt config, parameters that do not match
the config) raises :class:`CheckpointError` with the path and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from flax import nnx

from diffjax.config import ViTConfig
from diffjax.vit import ViT, relayout

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
OPT_STATE_DIR = "opt_state"
CHECKPOINTS_DIR = "checkpoints"
BEST_METRIC = "test_accuracy"


# orbax warns on every save without metrics when a best_fn is set (ours are the mid-epoch
# saves, by design), on every read-only manager, and when reading an item folder's metadata;
# all are expected here, not problems.
_EXPECTED_ORBAX_WARNINGS = (
    "Requested `tracked_metric`",
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
)


class _DropExpectedOrbaxWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith(_EXPECTED_ORBAX_WARNINGS)
            # item folders inside a training step keep their metadata one level up
            or (
                message.startswith("Metadata file does not exist")
                and message.endswith("_CHECKPOINT_METADATA")
            )
        )


logging.getLogger("absl").addFilter(_DropExpectedOrbaxWarnings())


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def config_to_dict(config: ViTConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict, cls: type = ViTConfig):
    """Inverse of :func:`config_to_dict` for config class ``cls`` (JSON turns tuples into lists)."""
    if not isinstance(d, dict):
        raise CheckpointError(f"a model config must be a JSON object, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)


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


def read_config(directory: str | os.PathLike, cls: type = ViTConfig):
    """The config (a ``cls``, default :class:`ViTConfig`) stored in ``directory/config.json``."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {directory}: not a diffjax model directory")
    try:
        d = json.loads(path.read_text())
        return config_from_dict(d["model"] if "model" in d else d, cls)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt or invalid model config {path}: {e}") from e


def _abstract(tree):
    """Shape, dtype and sharding of every array: the restore target orbax needs.

    Abstract leaves (``nnx.eval_shape``) carry no sharding; they get this process's first local
    device, so that a checkpoint written on any number of devices or processes restores here
    (orbax otherwise falls back to the saved topology and refuses a different one).
    """
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or here)

    return jax.tree.map(target, tree)


def _check_fits(item_dir: pathlib.Path, target) -> None:
    """Raise a clear error, before any read, if the saved arrays do not fit ``target``'s."""
    try:
        with ocp.StandardCheckpointer() as ckptr:
            metadata = ckptr.metadata(item_dir).item_metadata
        saved = {m.name: tuple(m.shape) for m in jax.tree.leaves(metadata)}
    except Exception as e:  # orbax raises many types for unreadable metadata
        raise CheckpointError(
            f"cannot read checkpoint metadata in {item_dir}: {type(e).__name__}: {e}"
        ) from e
    if not saved:
        raise CheckpointError(f"checkpoint {item_dir} records no arrays: corrupt or incomplete")
    wanted = {
        jax.tree_util.keystr(path, simple=True, separator="."): tuple(x.shape)
        for path, x in jax.tree_util.tree_flatten_with_path(target)[0]
    }
    if saved != wanted:
        problems = [f"missing {k}" for k in sorted(wanted.keys() - saved.keys())]
        problems += [f"unexpected {k}" for k in sorted(saved.keys() - wanted.keys())]
        problems += [
            f"{k}: saved {saved[k]}, expected {wanted[k]}"
            for k in sorted(wanted.keys() & saved.keys())
            if saved[k] != wanted[k]
        ]
        shown = "; ".join(problems[:5]) + (
            f"; … {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise CheckpointError(f"checkpoint {item_dir} does not fit: {shown}")


def restore_params(params_dir: str | os.PathLike, model: ViT) -> ViT:
    """Restore the parameters saved in ``params_dir`` into ``model`` (in place) and return it."""
    params_dir = pathlib.Path(params_dir).absolute()
    if not params_dir.is_dir():
        raise CheckpointError(f"parameter checkpoint {params_dir} does not exist")
    abstract = _abstract(nnx.state(model, nnx.Param))
    try:
        _check_fits(params_dir, abstract)
    except CheckpointError as e:
        raise CheckpointError(
            f"cannot restore parameters from {params_dir} into a model of config "
            f"{model.config}: {e}"
        ) from e
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


class TrainCheckpoints:
    """Training checkpoints of one run: ``<run_dir>/checkpoints/<step>/{params,opt_state}``.

    Keeps the ``keep`` latest steps plus the step with the highest ``test_accuracy`` among
    those saved with metrics. Saves run in the background and become visible only when
    complete (orbax writes to a temporary folder and renames it), so a killed run leaves the
    previous checkpoints intact. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2, read_only: bool = False):
        self.directory = pathlib.Path(run_dir).absolute() / CHECKPOINTS_DIR
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{run_dir} has no {CHECKPOINTS_DIR}/: not a training run")
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            create=not read_only,
            read_only=read_only,
            best_fn=lambda m: m[BEST_METRIC],  # makes orbax store the metrics with each step
            best_mode="max",
            preservation_policy=policies.AnyPreservationPolicy(
                [
                    policies.LatestN(keep),
                    policies.BestN(
                        get_metric_fn=lambda m: m[BEST_METRIC],
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            ),
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=(PARAMS_DIR, OPT_STATE_DIR), options=options
        )

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.close()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def metrics(self, step: int) -> dict | None:
        return self._manager.metrics(step)

    def best_step(self) -> int | None:
        """The kept step with the highest test accuracy (the later one on ties), or None."""
        scored = [(m[BEST_METRIC], s) for s in self.steps() if (m := self.metrics(s))]
        return max(scored)[1] if scored else None

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, params, opt_state, metrics: dict | None = None) -> None:
        """Start saving (in the background) parameters and optimizer state at ``step``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    PARAMS_DIR: ocp.args.StandardSave(params),
                    OPT_STATE_DIR: ocp.args.StandardSave(opt_state),
                }
            ),
            metrics=metrics,
            force=True,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def restore(self, step: int, params, opt_state):
        """Restore step ``step`` into the structure, shapes and shardings of the given trees.

        Returns:
          (params, opt_state).

        Raises:
          CheckpointError: the step is missing, corrupt, or does not fit the given trees.
        """
        if step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}")
        _check_fits(self.step_dir(step) / PARAMS_DIR, params)
        _check_fits(self.step_dir(step) / OPT_STATE_DIR, opt_state)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        PARAMS_DIR: ocp.args.StandardRestore(_abstract(params)),
                        OPT_STATE_DIR: ocp.args.StandardRestore(_abstract(opt_state)),
                    }
                ),
            )
        except Exception as e:  # orbax raises many types for truncated or mismatched trees
            raise CheckpointError(
                f"cannot restore training checkpoint {self.step_dir(step)}: {type(e).__name__}: {e}"
            ) from e
        return restored[PARAMS_DIR], restored[OPT_STATE_DIR]


def resolve_model_dir(directory: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """Where the config and the parameters of a saved model, run or checkpoint step are.

    Returns:
      (directory holding config.json, parameter directory).
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    if (directory / CONFIG_FILE).is_file() and (directory / PARAMS_DIR).is_dir():
        return directory, directory / PARAMS_DIR
    if (directory / CHECKPOINTS_DIR).is_dir():
        with TrainCheckpoints(directory, read_only=True) as ckpts:
            step = ckpts.best_step()
            step = ckpts.latest_step() if step is None else step
            if step is None:
                raise CheckpointError(f"training run {directory} has no complete checkpoint")
            return directory, ckpts.step_dir(step) / PARAMS_DIR
    if directory.parent.name == CHECKPOINTS_DIR and (directory / PARAMS_DIR).is_dir():
        return directory.parent.parent, directory / PARAMS_DIR
    raise CheckpointError(
        f"{directory} is neither a model directory ({CONFIG_FILE} + {PARAMS_DIR}/), a training "
        f"run directory ({CONFIG_FILE} + {CHECKPOINTS_DIR}/) nor a checkpoint step directory "
        f"({CHECKPOINTS_DIR}/<step>/{PARAMS_DIR}/)"
    )


def load_model(
    directory: str | os.PathLike, seed: int = 0, scan_layers: bool | None = False
) -> ViT:
    """Load a saved model, the model of a training run, or one training checkpoint.

    Written on any number of devices or processes, the parameters land on this process's first
    local device.

    Args:
      directory: a :func:`save_model` directory; a training run directory (its best checkpoint
        by test accuracy, else its latest); or one ``<run>/checkpoints/<step>`` directory.
      seed: seed of the rebuilt module's initialisers (unused: every parameter is restored).
      scan_layers: the layout of the returned model: ``False`` (default) the per-layer loop the
        analyses index, ``True`` the ``nnx.scan`` layout, ``None`` the layout it was saved in.
    """
    config_dir, params_dir = resolve_model_dir(directory)
    config = read_config(config_dir)
    # An abstract module: every parameter is restored, so none needs initialising.
    model = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(seed)))
    model = restore_params(params_dir, model)
    return model if scan_layers is None else relayout(model, scan_layers)
