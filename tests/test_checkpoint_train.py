"""Training checkpoints: keep-last-k-plus-best, load_model on runs and steps, clear errors."""

from __future__ import annotations

import gc
import json

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from diffjax.checkpoint import (
    CheckpointError,
    TrainCheckpoints,
    load_model,
    save_model,
    write_json_atomic,
    write_manifest,
)
from diffjax.config import preset
from diffjax.train import TrainConfig
from diffjax.vit import ViT

MODEL = preset("tiny", attention="diff")


@jax.jit
def make_params(seed):
    return nnx.split(ViT(MODEL, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)[1]


def params_of(model):
    return jax.device_get(nnx.state(model, nnx.Param))


def assert_params_equal(a, b):
    """Same tree structure, shapes, dtypes and values, bit for bit."""
    chex.assert_trees_all_equal(a, b, strict=True)


def make_run(run_dir, accuracies, keep=1):
    """A run directory with one checkpoint per entry (None: saved without metrics)."""
    write_json_atomic(run_dir / "config.json", TrainConfig(model=MODEL).to_dict())
    saved = {}
    with TrainCheckpoints(run_dir, keep=keep) as ckpts:
        for step, acc in enumerate(accuracies, start=1):
            params = make_params(step)
            metrics = None if acc is None else {"test_accuracy": acc, "test_loss": 1.0}
            ckpts.save(step, params, {"count": jnp.int32(step)}, metrics)
            saved[step] = jax.device_get(params)
    return saved


def test_keeps_latest_and_best_and_loads_the_best(tmp_path):
    saved = make_run(tmp_path, [0.5, 0.9, 0.7, None], keep=1)
    with TrainCheckpoints(tmp_path, read_only=True) as ckpts:
        assert ckpts.steps() == [2, 4]  # step 4 is the latest, step 2 the best
        assert ckpts.best_step() == 2 and ckpts.latest_step() == 4
        assert ckpts.metrics(2)["test_accuracy"] == 0.9
    assert_params_equal(params_of(load_model(tmp_path)), saved[2])
    assert_params_equal(params_of(load_model(tmp_path / "checkpoints" / "4")), saved[4])


def test_without_metrics_loads_the_latest_and_restores_exactly(tmp_path):
    saved = make_run(tmp_path, [None, None, None], keep=2)
    assert_params_equal(params_of(load_model(tmp_path)), saved[3])
    with TrainCheckpoints(tmp_path) as ckpts:
        assert ckpts.steps() == [2, 3]
        params, opt_state = ckpts.restore(3, make_params(0), {"count": jnp.int32(0)})
    assert_params_equal(params, saved[3])
    assert int(opt_state["count"]) == 3


def test_unfinished_save_is_ignored(tmp_path):
    saved = make_run(tmp_path, [0.5, None], keep=2)
    # What a run killed while saving step 7 leaves: orbax's temporary folder, never renamed.
    partial = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1234567"
    (partial / "params").mkdir(parents=True)
    with TrainCheckpoints(tmp_path) as ckpts:
        assert ckpts.latest_step() == 2
    assert_params_equal(params_of(load_model(tmp_path / "checkpoints" / "2")), saved[2])


# A failed orbax read leaves tensorstore handles and coroutines behind; they are collected (and
# reported by pytest as unraisable) within the test that caused them.
ORBAX_LEFTOVERS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_LEFTOVERS
def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    make_run(tmp_path, [0.5], keep=1)
    params_dir = tmp_path / "checkpoints" / "1" / "params"
    data_files = [f for f in params_dir.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data_files
    for f in data_files:  # truncated array data
        f.write_bytes(f.read_bytes()[:20])
    corrupt_data = r"corrupt checkpoint file .*/checkpoints/1/params/d/\w+: its sha256 differs"
    with pytest.raises(CheckpointError, match=corrupt_data):
        load_model(tmp_path)
    with TrainCheckpoints(tmp_path) as ckpts, pytest.raises(CheckpointError, match=corrupt_data):
        ckpts.restore(1, make_params(0), {"count": jnp.int32(0)})
    with TrainCheckpoints(tmp_path) as ckpts, pytest.raises(CheckpointError, match="no checkpoint"):
        ckpts.restore(5, make_params(0), {"count": jnp.int32(0)})
    (params_dir / "_METADATA").write_text("{")  # truncated metadata
    with pytest.raises(CheckpointError, match="params/_METADATA"):
        load_model(tmp_path)
    gc.collect()


@ORBAX_LEFTOVERS
def test_mismatched_config_raises_clear_error(tmp_path):
    make_run(tmp_path, [0.5], keep=1)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["width"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint file .*/config\.json"):
        load_model(tmp_path)  # the config is not the one the step was saved with
    write_manifest(tmp_path / "checkpoints" / "1", also=("../../config.json",))  # as if it were
    fit = r"cannot restore parameters.*width=32.*does not fit: .*saved \(16,\), expected \(32,\)"
    with pytest.raises(CheckpointError, match=fit):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)
    gc.collect()


def test_not_a_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither a model directory"):
        load_model(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    write_json_atomic(tmp_path / "config.json", TrainConfig(model=MODEL).to_dict())
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_model(tmp_path)


def test_save_model_directories_still_load(tmp_path):
    model = nnx.eval_shape(lambda: ViT(MODEL, rngs=nnx.Rngs(0)))
    nnx.update(model, make_params(3))
    save_model(tmp_path / "m", model)
    assert_params_equal(params_of(load_model(tmp_path / "m")), params_of(model))
