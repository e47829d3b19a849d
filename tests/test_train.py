"""Training: loss and schedule against closed forms, sharded step, mini run, exact resume."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from diffjax import sharding
from diffjax.checkpoint import CheckpointError, load_model
from diffjax.config import ViTConfig, preset
from diffjax.data import load_dataset, synthetic
from diffjax.train import (
    TrainConfig,
    check_finite,
    evaluate,
    fit_to_data,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    smoothed_cross_entropy,
    train,
    train_step,
    uses_resident_data,
)

# 16 steps (2 epochs of 8) on the embedded sample, with dropout on so that its PRNG stream is
# part of what the resume test checks. Every test here uses it: one compilation.
CONFIG = TrainConfig(
    model=ViTConfig(width=32, depth=2, num_heads=4, patch_size=8, attention="diff", dropout=0.1),
    dataset="embedded",
    epochs=2,
    batch_size=32,
    learning_rate=2e-3,
    warmup_epochs=0.5,
    train_examples=256,
    test_examples=128,
    eval_batch_size=128,
    checkpoint_every_steps=3,
    log_every_steps=1,
)
STEPS = 16


class Killed(Exception):
    """Stands in for the process dying mid-run."""


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mini")
    model, summary = train(CONFIG, run_dir)
    return run_dir, model, summary


def test_mini_run_lowers_the_loss(mini_run):
    run_dir, model, summary = mini_run
    records = read_metrics(run_dir)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
    # Against the untrained model on the same test images (chance: 10 %, ln 10 nats).
    test = load_dataset("embedded", "test").take(CONFIG.test_examples)
    untrained = nnx.eval_shape(lambda: init_model(CONFIG))
    nnx.update(untrained, init_state(config=CONFIG, steps_per_epoch=8).params)  # compiled
    untrained = evaluate(untrained, test, 128)
    final = summary["final"]
    assert final["test_count"] == 128
    assert final["test_loss"] < untrained["test_loss"] - 0.05
    assert final["test_accuracy"] > 0.15
    assert [r["step"] for r in records if r["kind"] == "eval"] == [8, 16]
    # The returned model is the final one: evaluating it again reproduces the final metrics.
    again = evaluate(model, test, 128)
    assert again["test_count"] == 128 and again["test_accuracy"] == final["test_accuracy"]
    np.testing.assert_allclose(again["test_loss"], final["test_loss"], rtol=1e-6)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["final"] == final and results["steps"] == STEPS
    assert json.loads((run_dir / "config.json").read_text())["model"]["attention"] == "diff"


def test_tensorboard_events_hold_the_metrics(mini_run):
    # Read back by TensorBoard's own event reader: each number of metrics.jsonl, at its step.
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run_dir, _, _ = mini_run
    events = ea.EventAccumulator(str(run_dir))
    events.Reload()
    logged = read_metrics(run_dir)
    for kind, name in (("train", "loss"), ("eval", "test_accuracy")):
        expected = [(r["step"], np.float32(r[name])) for r in logged if r["kind"] == kind]
        assert [(e.step, e.value) for e in events.Scalars(f"{kind}/{name}")] == expected
    lam = [(r["step"], np.float32(r["lambda"][1])) for r in logged if r["kind"] == "train"]
    assert [(e.step, e.value) for e in events.Scalars("train/lambda/1")] == lam


def init_model(config: TrainConfig):
    from diffjax.vit import ViT

    return ViT(config.model, rngs=nnx.Rngs(config.seed))


def test_resume_after_kill_equals_uninterrupted_run(mini_run, tmp_path):
    run_dir, model, summary = mini_run

    def kill_at_step_14(record):
        if record["kind"] == "train" and record["step"] == 14:
            raise Killed

    with pytest.raises(Killed):
        train(CONFIG, tmp_path, progress=kill_at_step_14)
    # Checkpoints 3, 6, 8 (eval), 9, 12 were started; the latest two and the best are kept.
    events = []
    resumed, resumed_summary = train(CONFIG, tmp_path, progress=events.append)
    assert events[0] == {"kind": "start", "step": 12, "total_steps": STEPS, "steps_per_epoch": 8}
    assert resumed_summary["resumed_from_step"] == 12
    assert_trees_equal(nnx.state(resumed, nnx.Param), nnx.state(model, nnx.Param))
    assert resumed_summary["final"] == summary["final"]
    # metrics.jsonl holds each step once, with the uninterrupted run's values.
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "img_per_s"} for r in rs]  # noqa: E731
    assert drop_time(read_metrics(tmp_path)) == drop_time(read_metrics(run_dir))
    # The final optimizer state matches too (checkpoint of the last step).
    a = load_model(tmp_path / "checkpoints" / str(STEPS))
    assert_trees_equal(nnx.state(a, nnx.Param), nnx.state(model, nnx.Param))
    # Running again finds the run complete and trains nothing.
    _, again = train(CONFIG, tmp_path)
    assert again["resumed_from_step"] == STEPS and again["final"] == summary["final"]


# Two different programs equal to the bit: a claim about the code XLA generates by default.
@pytest.mark.default_compiler
def test_resident_data_trains_exactly_as_the_host_fed_path(mini_run, tmp_path):
    # The mini run kept its 256 training images on the 4 devices (they fit the budget) and
    # gathered each batch in the step; fed from the host, the same run sees the same batches and
    # runs the same arithmetic on the same shardings: parameters and metrics equal to the bit.
    run_dir, model, summary = mini_run
    assert summary["resident_data"] is True
    host, host_summary = train(CONFIG.replace(resident_data=False, checkpoint_every_steps=0),
                               tmp_path)  # fmt: skip
    assert host_summary["resident_data"] is False
    assert_trees_equal(nnx.state(host, nnx.Param), nnx.state(model, nnx.Param))
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "img_per_s"} for r in rs]  # noqa: E731
    assert drop_time(read_metrics(tmp_path)) == drop_time(read_metrics(run_dir))
    assert host_summary["final"] == summary["final"]


def test_resident_data_is_used_where_it_fits_and_is_not_the_runs_identity(monkeypatch):
    data = synthetic(10, image_size=8)  # 10 × 192 image bytes + 10 × 4 label + 10 × 4 order
    assert uses_resident_data(CONFIG, data)
    monkeypatch.setattr("diffjax.train.RESIDENT_DATA_BYTES", 10 * 200 - 1)
    assert not uses_resident_data(CONFIG, data)
    assert uses_resident_data(CONFIG.replace(resident_data=True), data)
    assert not uses_resident_data(CONFIG.replace(resident_data=False), data)
    assert CONFIG.replace(resident_data=True).to_dict() == CONFIG.to_dict()
    assert "resident_data" not in CONFIG.to_dict()
    with pytest.raises(ValueError, match="resident_data"):
        CONFIG.replace(resident_data=1)


def test_resume_refuses_a_different_config(mini_run):
    run_dir, _, _ = mini_run
    with pytest.raises(CheckpointError, match="learning_rate"):
        train(CONFIG.replace(learning_rate=1e-2), run_dir)


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices")
def test_sharded_train_step_equals_one_device():
    data = synthetic(96, image_size=32, seed=4)
    start = jax.device_get(init_state(config=CONFIG, steps_per_epoch=8))
    results = {}
    for n in (1, 4):
        mesh = sharding.data_mesh(jax.devices()[:n])
        state = sharding.replicate(start, mesh)
        for i in range(3):
            batch = (data.images[32 * i : 32 * (i + 1)], data.labels[32 * i : 32 * (i + 1)])
            state, metrics = train_step(
                state, *sharding.shard_batch(batch, mesh), config=CONFIG, steps_per_epoch=8
            )
        leaf = jax.tree.leaves(state.params)[0]
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == n
        results[n] = jax.device_get((state, metrics))
    (one, m1), (four, m4) = results[1], results[4]
    assert int(one.step) == int(four.step) == 3
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5)


def test_divergence_is_an_error():
    ok = {"loss": np.float32(2.3), "grad_norm": np.float32(1.0)}
    check_finite([ok, ok], last_step=7)
    with pytest.raises(FloatingPointError, match="diverged at step 6"):
        check_finite([ok, {"loss": np.float32(np.nan), "grad_norm": np.float32(1.0)}, ok], 7)
    with pytest.raises(FloatingPointError, match="step 7"):
        check_finite([ok, {"loss": np.float32(2.0), "grad_norm": np.float32(np.inf)}], 7)
    # Certified training: an overflowed bound says so, and what to change.
    bounds = {"loss": np.float32(np.inf), "grad_norm": np.float32(np.nan),
              "robust_loss": np.float32(np.inf), "robust_eps": np.float32(3e-5)}  # fmt: skip
    message = r"step 7: the robust loss is inf.*warmup_epochs=0"
    with pytest.raises(FloatingPointError, match=message):
        check_finite([ok, bounds], 7)


def test_smoothed_cross_entropy_matches_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7))
    labels = rng.integers(0, 7, 5)
    s = 0.1
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    targets = np.full((5, 7), s / 7)
    targets[np.arange(5), labels] += 1 - s
    expected = -(targets * log_p).sum(1)
    got = smoothed_cross_entropy(np.float32(logits), labels, s)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_learning_rate_schedule_closed_form():
    config = TrainConfig(
        model=preset("tiny"), epochs=4, learning_rate=1e-3, end_learning_rate=1e-5, warmup_epochs=1
    )
    spe = 10
    schedule = learning_rate_schedule(config, spe)
    for step in (0, 3, 10, 17, 25, 39, 40):
        if step < 10:
            expected = 1e-3 * step / 10
        else:
            t = (step - 10) / 30
            expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-10)


def test_weight_decay_only_on_kernels():
    config = TrainConfig(
        model=preset("tiny", attention="diff"),
        learning_rate=0.1,
        end_learning_rate=0.1,
        warmup_epochs=0,
        weight_decay=0.5,
        grad_clip=None,
    )
    rng = np.random.default_rng(0)
    shapes = nnx.split(nnx.eval_shape(lambda: init_model(config)), nnx.Param)[1]
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    tx = make_optimizer(config, steps_per_epoch=10)
    zero = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
    flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        # With zero gradients AdamW's update is −lr · wd · p on decayed parameters, else 0.
        expected = -0.1 * 0.5 * flat_p[path] if "kernel" in names else np.zeros_like(u)
        np.testing.assert_allclose(np.asarray(u), np.asarray(expected), rtol=1e-6, atol=1e-12)


def test_gradient_clipping_acts_before_adam():
    # A gradient of norm 200 is scaled to norm 1, one of norm 0.5 is not: Adam's second update
    # then differs from unclipped Adam's and equals Adam's on the clipped gradients.
    config = TrainConfig(
        model=preset("tiny"),
        learning_rate=0.1,
        end_learning_rate=0.1,
        warmup_epochs=0,
        weight_decay=0.0,
        grad_clip=1.0,
    )
    rng = np.random.default_rng(1)
    params = {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}}
    params = jax.tree.map(np.float32, params)

    def random_grads(norm):
        g = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        scale = norm / float(optax.tree.norm(g))
        return jax.tree.map(lambda x: x * scale, g)

    clipped, reference = make_optimizer(config, 10), optax.adam(0.1)
    state, ref_state = clipped.init(params), reference.init(params)
    for g in (random_grads(200.0), random_grads(0.5)):
        norm = float(optax.tree.norm(g))
        u, state = clipped.update(g, state, params)
        u_ref, ref_state = reference.update(
            jax.tree.map(lambda x, norm=norm: x / max(norm, 1.0), g), ref_state, params
        )
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_config_validation_presets_and_fit_to_data(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0.0)
    for attention in ("softmax", "diff"):
        config = CONFIG.replace(model=CONFIG.model.replace(attention=attention))
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    cpu = TrainConfig(model=preset("cifar", width=64, num_heads=4))
    tiny = fit_to_data(cpu, synthetic(2, image_size=64, num_classes=200))
    assert (tiny.model.image_size, tiny.model.patch_size, tiny.model.num_classes) == (64, 8, 200)
    with pytest.raises(ValueError, match="fit_to_data"):
        train(
            CONFIG,
            tmp_path,
            train_data=synthetic(64, image_size=16),
            test_data=synthetic(8, image_size=16),
        )
    assert not any(tmp_path.iterdir())  # nothing written for a run that cannot start


def test_the_models_lambdas_equal_the_lambda_its_attention_uses():
    import diffjax as dj

    config = dj.preset("tiny", attention="diff", diff_layers=(1,), lambda_init="schedule")
    model = dj.ViT(config, rngs=nnx.Rngs(4))
    _, inter = model(np.zeros((1, 8, 8, 3), np.float32), capture=True)
    got = model.lambdas()
    assert got[0] is None
    assert got[1] == pytest.approx(float(inter.maps[1].lam), abs=1e-7)
