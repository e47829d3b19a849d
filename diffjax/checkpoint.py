"""Saving and loading models and training state with orbax.

    save_model(directory, model)      # writes atomically: a crash leaves no half-written model
    model = load_model(directory)     # rebuilds the ViT from its config, restores the parameters
    lm = load_lm_model(directory)     # the same for a language model (diffjax.lm.LM)

A *model directory* holds ``config.json``, ``params/`` and ``manifest.json``. A *training run
directory* (written by :func:`diffjax.train.train`) holds ``config.json`` (its ``"model"`` key is
the ViT config), ``metrics.jsonl`` and ``checkpoints/<step>/{params,opt_state,metrics,
manifest.json}``, managed by :class:`TrainCheckpoints` (keep the last k and the best by test
accuracy; saves are atomic). :func:`load_model` takes any of the three: a model directory, a run
directory (best checkpoint, else the latest) or one ``checkpoints/<step>`` directory.

Integrity: every model directory and checkpoint step carries ``manifest.json``, the sha256 of
each of its files (and of the run's ``config.json``), written last: a step without one is an
unfinished save. Restoring verifies the digests of what it reads, so a flipped bit or a
truncated file raises :class:`CheckpointError` naming the file instead of loading other values.

Every failure mode (missing directory, missing or corrupt config, parameters that do not match
the config, a digest mismatch, a save that fails, e.g. on a full disk) raises
:class:`CheckpointError` with the path and what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import secrets
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from flax import nnx

from diffjax.config import ViTConfig
from diffjax.data.download import file_digest
from diffjax.lm import LM, LMConfig
from diffjax.locking import exclusive
from diffjax.stopping import critical
from diffjax.vit import WEIGHTS, ViT, relayout

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
OPT_STATE_DIR = "opt_state"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
METRICS_DIR = "metrics"  # orbax's item for the metrics saved with a step
BEST_METRIC = "test_accuracy"
# what orbax names a step while writing it; one left behind is a save that never finished
ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"


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
            # a failed synchronous save logs its cause with a traceback from each of orbax's
            # threads (hundreds of lines), then raises it here: TrainCheckpoints.save reports
            # it once, in its CheckpointError
            or "_SignalingThread.run() raised an exception" in message
        )


logging.getLogger("absl").addFilter(_DropExpectedOrbaxWarnings())


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def config_to_dict(config) -> dict:
    """A model config (ViTConfig, CLIPConfig, ...) as a JSON-ready dict: its own ``to_dict``
    where it has one (ViTConfig leaves unused optional fields out), else every field."""
    return config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)


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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see
    half; a failed write (e.g. a full disk) removes the temporary file and names ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp (mode 0600): the file gets the usual permissions, 0666 less the umask.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        pathlib.Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def _files_below(directory: pathlib.Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    )


def write_manifest(directory: str | os.PathLike, also: tuple[str, ...] = ()) -> None:
    """Record the sha256 of every file below ``directory`` in ``directory/manifest.json``.

    Args:
      also: further files, as paths relative to ``directory`` (e.g. ``"../../config.json"``,
        the run config a checkpoint step belongs to).
    """
    directory = pathlib.Path(directory)
    names = _files_below(directory) + list(also)
    digests = {name: file_digest(directory / name, "sha256") for name in names}
    write_json_atomic(directory / MANIFEST_FILE, {"sha256": digests})


def has_manifest(directory: str | os.PathLike) -> bool:
    return (pathlib.Path(directory) / MANIFEST_FILE).is_file()


def verify_manifest(directory: str | os.PathLike, parts: tuple[str, ...] | None = None) -> None:
    """Check files below ``directory`` against its manifest.

    Args:
      parts: check only the files under these top-level names (e.g. ``("params",)``) and the
        manifest's extra files; ``None``: every file.

    Raises:
      CheckpointError: no or an unreadable manifest, or a file missing, unexpected or with a
        different digest; the message names the file.
    """
    directory = pathlib.Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {MANIFEST_FILE}: an unfinished save, or written before diffjax "
            "recorded digests; its contents cannot be verified"
        )
    try:
        digests = json.loads(path.read_text())["sha256"]
        if not isinstance(digests, dict):
            raise TypeError(f"sha256 is a {type(digests).__name__}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"corrupt manifest {path}: {type(e).__name__}: {e}") from e

    def selected(name: str) -> bool:
        return parts is None or name.startswith("../") or name.split("/")[0] in parts

    present = {name for name in _files_below(directory) if selected(name)}
    recorded = {name for name in digests if selected(name)}
    unexpected = sorted(present - recorded)
    if unexpected:
        raise CheckpointError(f"unexpected file {directory / unexpected[0]}: not in {path}")
    for name in sorted(recorded):
        file = pathlib.Path(os.path.normpath(directory / name))  # "../../config.json" in full
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing (listed in {path})")
        if file_digest(file, "sha256") != digests[name]:
            raise CheckpointError(
                f"corrupt checkpoint file {file}: its sha256 differs from the one in {path}"
            )


def save_model(
    directory: str | os.PathLike, model: ViT | LM, files: dict[str, os.PathLike] | None = None
) -> pathlib.Path:
    """Save ``model`` (config and parameters) to ``directory``, replacing what was there.

    Args:
      files: ``{name: source path}`` of files copied in beside the config (a language model's
        ``tokenizer.json``), covered by the manifest like the parameters.
    """
    directory = pathlib.Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        write_json_atomic(tmp / CONFIG_FILE, config_to_dict(model.config))
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, nnx.state(model, WEIGHTS))
        write_manifest(tmp)
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
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
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


def _saved_shapes(item_dir: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every array saved in ``item_dir``, from orbax's metadata."""
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
    return saved


def _check_fits(item_dir: pathlib.Path, target) -> None:
    """Raise a clear error, before any read, if the saved arrays do not fit ``target``'s."""
    saved = _saved_shapes(item_dir)
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
    # the parameters and the config they were saved with (a model's or its run's config.json)
    verify_manifest(params_dir.parent, parts=(PARAMS_DIR, CONFIG_FILE))
    return _restore_verified(params_dir, model)


def _restore_verified(params_dir: pathlib.Path, model: ViT) -> ViT:
    abstract = _abstract(nnx.state(model, WEIGHTS))
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
    those saved with metrics. A save is complete, and visible, only once orbax has renamed its
    temporary folder and the step's manifest is written; older steps are deleted only after
    that, so a killed or failed save leaves every earlier checkpoint intact. Opening a run
    (not read-only) removes what an unfinished save left: orbax temporary folders, and a newest
    step without a manifest (killed between orbax's rename and the manifest). Any other step
    without a manifest is refused with :class:`CheckpointError`, never deleted. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2, read_only: bool = False):
        self.directory = pathlib.Path(run_dir).absolute() / CHECKPOINTS_DIR
        self.keep = keep
        # one process writes, seals and deletes (the others see its files on a shared disk)
        self._writer = not read_only and jax.process_index() == 0
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{run_dir} has no {CHECKPOINTS_DIR}/: not a training run")
        self._lock = contextlib.ExitStack()
        if self._writer:
            # a second writer would sweep the first one's save in progress and log twice
            self._lock.enter_context(exclusive(run_dir, "run directory"))
        try:
            self._open(read_only)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, read_only: bool) -> None:
        if self._writer:
            self._sweep_unfinished()
        # orbax reads every step's metrics when it opens a run: a corrupt one would raise a
        # bare JSONDecodeError naming no file
        for step_dir in self._step_dirs():
            if has_manifest(step_dir):
                verify_manifest(step_dir, parts=(METRICS_DIR,))
        options = ocp.CheckpointManagerOptions(
            create=not read_only,
            read_only=read_only,
            best_fn=lambda m: m[BEST_METRIC],  # makes orbax store the metrics with each step
            best_mode="max",
            # Deleting is ours (_prune), after the new step is sealed: orbax would delete old
            # steps even when the new one failed.
            preservation_policy=ocp.checkpoint_managers.LatestN(n=None),  # all
            # Synchronous saves: a failure raises here, with its cause, instead of being
            # logged by a background thread while training goes on.
            enable_async_checkpointing=False,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=(PARAMS_DIR, OPT_STATE_DIR), options=options
            )
        except Exception as e:  # orbax raises many types for unreadable step metadata
            raise CheckpointError(
                f"cannot open the checkpoints in {self.directory}: {type(e).__name__}: {e}"
            ) from e

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the manager and the run directory's lock."""
        try:
            self._manager.close()
        finally:
            self._lock.close()

    def _step_dirs(self) -> list[pathlib.Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()]

    def _sweep_unfinished(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if ORBAX_TMP_MARK in path.name:
                    shutil.rmtree(path)
        steps = {int(p.name): has_manifest(p) for p in self._step_dirs()}
        unsealed = sorted(s for s, sealed in steps.items() if not sealed)
        sealed = [s for s, ok in steps.items() if ok]
        # Saves are sequential and each is sealed before the next starts: only the newest
        # step can be an unfinished one, and training recomputes it exactly.
        if unsealed[:-1] or (unsealed and sealed and unsealed[-1] < max(sealed)):
            raise CheckpointError(
                f"{self.directory}: steps {unsealed} have no {MANIFEST_FILE} (written before "
                "diffjax recorded digests, or damaged); they cannot be verified, move them away"
            )
        if unsealed:
            shutil.rmtree(self.step_dir(unsealed[-1]))

    def steps(self) -> list[int]:
        """The complete (sealed) steps, ascending."""
        return sorted(s for s in self._manager.all_steps() if has_manifest(self.step_dir(s)))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict | None:
        """The test metrics saved with ``step`` (verified when the run was opened), or None."""
        try:
            return self._manager.metrics(step)
        except Exception as e:  # orbax raises many types for unreadable metrics
            raise CheckpointError(
                f"cannot read the metrics of {self.step_dir(step)}: {type(e).__name__}: {e}"
            ) from e

    def best_step(self) -> int | None:
        """The kept step with the highest test accuracy (the later one on ties), or None."""
        scored = [(m[BEST_METRIC], s) for s in self.steps() if (m := self.metrics(s))]
        return max(scored)[1] if scored else None

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, params, opt_state, metrics: dict | None = None) -> None:
        """Save parameters, optimizer state and metrics at ``step``; seal; prune old steps.

        Raises:
          CheckpointError: the save failed (e.g. a full disk); it names the step's path and
            the cause. Nothing of the failed step remains and earlier steps are all kept.
        """
        with critical():  # SIGINT / SIGTERM in the CLI: after the step is sealed or abandoned
            self._save(step, params, opt_state, metrics)

    def _save(self, step: int, params, opt_state, metrics: dict | None) -> None:
        path = self.step_dir(step)
        try:
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
            if self._writer:
                run_config = self.directory.parent / CONFIG_FILE
                also = (f"../../{CONFIG_FILE}",) if run_config.is_file() else ()
                write_manifest(path, also=also)
        except Exception as e:  # orbax and tensorstore raise many types for failed writes
            if self._writer:
                unfinished = [] if has_manifest(path) else [path]  # never a sealed step
                for leftover in unfinished + list(self.directory.glob(f"{step}{ORBAX_TMP_MARK}*")):
                    shutil.rmtree(leftover, ignore_errors=True)
            self._manager.reload()
            raise CheckpointError(
                f"saving checkpoint {path} failed: {type(e).__name__}: {e}; earlier "
                f"checkpoints (steps {self.steps()}) are kept"
            ) from e
        if self._writer:
            self._prune()

    def _prune(self) -> None:
        steps = self.steps()
        kept = set(steps[-self.keep :]) | {self.best_step()}
        for step in steps:
            if step not in kept:
                # renamed first: a kill mid-delete leaves a temporary folder (swept at the next
                # start), never a half-deleted step that still looks sealed
                doomed = self.directory / f"{step}{ORBAX_TMP_MARK}-deleted"
                os.replace(self.step_dir(step), doomed)
                shutil.rmtree(doomed)
        self._manager.reload()

    def restore(self, step: int, params, opt_state):
        """Restore step ``step`` into the structure, shapes and shardings of the given trees.

        Returns:
          (params, opt_state).

        Raises:
          CheckpointError: the step is missing, corrupt (a digest differs from its manifest),
            or does not fit the given trees.
        """
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}")
        verify_manifest(self.step_dir(step))
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
    model = _load_verified(config_dir, params_dir, ViTConfig, ViT, seed)
    return model if scan_layers is None else relayout(model, scan_layers)


def _load_verified(config_dir: pathlib.Path, params_dir: pathlib.Path, config_cls: type,
                   module_cls: type, seed: int):  # fmt: skip
    """``module_cls(config)`` of the ``config_cls`` in ``config_dir``, holding ``params_dir``."""
    # The config is trusted only after its digest is checked, and only for a model the saved
    # arrays can hold (every block has at least `width` parameters): building the abstract
    # model of an absurd depth would take forever before any other check.
    verify_manifest(params_dir.parent, parts=(PARAMS_DIR, CONFIG_FILE))
    config = read_config(config_dir, config_cls)
    saved = sum(math.prod(shape) for shape in _saved_shapes(params_dir).values())
    if config.depth * config.width > saved:
        raise CheckpointError(
            f"{config_dir / CONFIG_FILE} declares depth {config.depth} and width "
            f"{config.width}, more than the {saved} numbers saved in {params_dir} can hold"
        )
    # An abstract module: every parameter is restored, so none needs initialising.
    model = nnx.eval_shape(lambda: module_cls(config, rngs=nnx.Rngs(seed)))
    return _restore_verified(params_dir, model)


def is_lm_directory(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a saved language model (:func:`save_model` of a
    :class:`diffjax.lm.LM`, e.g. ``diffjax import-lm``): its config has a vocabulary and no
    image size."""
    path = pathlib.Path(directory) / CONFIG_FILE
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False  # not a model directory at all: the loader of the caller says why
    return isinstance(d, dict) and "vocab_size" in d and "image_size" not in d


def load_lm_model(directory: str | os.PathLike, seed: int = 0):
    """The :class:`diffjax.lm.LM` saved by :func:`save_model` in ``directory`` (digests
    checked as for :func:`load_model`). Training runs of :mod:`diffjax.lm_train` load with
    :func:`diffjax.lm_train.load_lm`."""
    directory = pathlib.Path(directory).absolute()
    if not (directory / CONFIG_FILE).is_file() or not (directory / PARAMS_DIR).is_dir():
        raise CheckpointError(f"{directory} is not a model directory ({CONFIG_FILE} + "
                              f"{PARAMS_DIR}/)")  # fmt: skip
    return _load_verified(directory, directory / PARAMS_DIR, LMConfig, LM, seed)
