"""Training a BatchNorm / ReLU ViT: the step normalises with the batch's statistics and updates
the running ones; checkpoints carry them, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax import sharding
from diffjax.checkpoint import config_from_dict, config_to_dict, load_model
from diffjax.config import ViTConfig
from diffjax.data import load_dataset
from diffjax.data.pipeline import to_unit_range
from diffjax.train import TrainConfig, init_state, smoothed_cross_entropy, train, train_step
from diffjax.vit import BATCHNORM_MOMENTUM, WEIGHTS, ViT

MODEL = ViTConfig(width=16, depth=1, num_heads=2, patch_size=8, norm="batchnorm",
                  activation="relu")  # fmt: skip
# 8 steps (2 epochs of 4), no augmentation (the step's input is the batch itself).
CONFIG = TrainConfig(
    model=MODEL, dataset="embedded", epochs=2, batch_size=32, learning_rate=2e-3,
    warmup_epochs=0.5, train_examples=128, test_examples=64, eval_batch_size=64,
    checkpoint_every_steps=3, log_every_steps=1, crop_padding=0, flip=False,
)  # fmt: skip


class Killed(Exception):
    """Stands in for the process dying mid-run."""


def test_step_uses_batch_statistics_and_updates_the_running_ones():
    data = load_dataset("embedded", "train").take(32)
    mesh = sharding.data_mesh(jax.devices()[:1])
    start = init_state(config=CONFIG, steps_per_epoch=4)
    # A copy: running the training-mode model below must not move the start state's statistics.
    model = nnx.merge(nnx.graphdef(ViT(MODEL, rngs=nnx.Rngs(0))), start.params, copy=True)
    x = to_unit_range(jnp.asarray(data.images))
    # What the step's forward pass must be: the training-mode model, on this batch's statistics.
    h0 = np.asarray(model.embed(x), np.float64)  # the first BatchNorm's input [B, N, D]
    model.train()
    want_loss = smoothed_cross_entropy(model(x), jnp.asarray(data.labels), 0.1).mean()
    model.eval()
    eval_loss = smoothed_cross_entropy(model(x), jnp.asarray(data.labels), 0.1).mean()
    state, metrics = train_step(
        sharding.replicate(start, mesh), *sharding.shard_batch((data.images, data.labels), mesh),
        config=CONFIG, steps_per_epoch=4,
    )  # fmt: skip
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-6)
    # The two modes differ here by far more than that tolerance.
    assert abs(float(want_loss) - float(eval_loss)) > 100 * 1e-6 * float(want_loss)
    # Running statistics: m·old + (1 − m)·batch (initial mean 0, variance 1; biased variance).
    norm1 = state.params["blocks"][0]["norm1"]
    m = BATCHNORM_MOMENTUM
    mu, var = h0.mean((0, 1)), h0.var((0, 1))
    np.testing.assert_allclose(norm1["mean"][...], (1 - m) * mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(norm1["var"][...], m + (1 - m) * var, rtol=1e-5, atol=1e-7)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    model, summary = train(CONFIG, tmp_path / "whole")

    def kill_at_step_7(record):
        if record["kind"] == "train" and record["step"] == 7:
            raise Killed

    with pytest.raises(Killed):
        train(CONFIG, tmp_path / "resumed", progress=kill_at_step_7)
    resumed, resumed_summary = train(CONFIG, tmp_path / "resumed")
    assert resumed_summary["resumed_from_step"] == 6
    stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert stats and not any(np.allclose(s, 0) or np.allclose(s, 1) for s in stats)
    for a, b in zip(jax.tree.leaves(nnx.state(resumed, WEIGHTS)),
                    jax.tree.leaves(nnx.state(model, WEIGHTS)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert resumed_summary["final"] == summary["final"]
    # The saved model holds the running statistics: it evaluates as the trained one.
    loaded = load_model(tmp_path / "whole" / "checkpoints" / "8")
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    np.testing.assert_array_equal(loaded(x), model(x))


def test_norm_field_serialises_only_when_used():
    assert "norm" not in config_to_dict(ViTConfig())
    assert "norm" not in CONFIG.replace(model=ViTConfig()).to_dict()["model"]
    d = config_to_dict(MODEL)
    assert d["norm"] == "batchnorm" and config_from_dict(d) == MODEL
    assert TrainConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="norm must be one of"):
        ViTConfig(norm="groupnorm")
    with pytest.raises(ValueError, match="lipschitz_penalty needs model.norm='layernorm'"):
        CONFIG.replace(lipschitz_penalty=0.1)
