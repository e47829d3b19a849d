"""Training ViT / DiffViT classifiers: one jitted, data-parallel step, orbax checkpoints, resume.

    config = TrainConfig(model=ViTConfig(attention="diff"), epochs=10)
    model, metrics = train(config, "runs/cifar10_diffvit")   # resumes if the run exists

Named recipes (``mini``, ``cpu``, ``paper``) are experiment configs: ``experiments/configs``.

The run directory holds ``config.json`` (the resolved :class:`TrainConfig`; its ``"model"`` key
is the ViT config), ``metrics.jsonl`` (one JSON record per log step and per evaluation),
``checkpoints/`` (:class:`diffjax.checkpoint.TrainCheckpoints`) and, at the end,
``results.json``. ``diffjax.checkpoint.load_model(run_dir)`` returns the best checkpoint's model.

Recipe: AdamW (weight decay on kernels only) with linear warmup then cosine decay, softmax
cross-entropy with label smoothing, optional global-norm gradient clipping, random crop with zero
padding and horizontal flips drawn on the device. Step ``s`` uses PRNG key
``fold_in(key(seed), s)`` and batch ``s`` of a per-epoch permutation seeded by ``(seed, epoch)``,
so a run resumed from a checkpoint computes exactly what an uninterrupted run does.

Where the training set fits :data:`RESIDENT_DATA_BYTES` per device (CIFAR-10 does: 154 MB), it
is put on every device once, uint8, and each step gathers its batch inside the jitted step
(:func:`resident_train_step`) from the epoch's permutation: no host-to-device copy per step.
The batches and the arithmetic are the host-fed path's (:func:`train_step`): the same
parameters, bit for bit. ``TrainConfig.resident_data`` forces either.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffjax import records, sharding, verify
from diffjax.analysis.lipschitz import top_singular_values
from diffjax.attack_config import PGDConfig
from diffjax.attacks import pgd
from diffjax.attacks.interface import model_function
from diffjax.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    TrainCheckpoints,
    write_json_atomic,
    write_text_atomic,
)
from diffjax.config import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainConfig,
    ViTConfig,
)
from diffjax.data import Dataset, load_dataset
from diffjax.data.pipeline import (
    augment,
    epoch_permutation,
    eval_batches,
    steps_per_epoch,
    to_unit_range,
    train_batches,
)
from diffjax.vit import WEIGHTS, ViT

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
# Per device (every device holds the whole set): CIFAR-10/100's 50,000 × 32 × 32 × 3 uint8 images
# (154 MB) fit; Tiny ImageNet's 100,000 × 64 × 64 × 3 (1.2 GB) stays on the host.
RESIDENT_DATA_BYTES = 1 << 30
# fold_in tags of the step key's extra streams (the augmentation/dropout split is unchanged).
# Not 0 or 1: with JAX's partitionable threefry, fold_in(key, i) is split(key)[i], so tag 1
# would be the dropout key itself.
NOISE_STREAM, POWER_STREAM, PGD_STREAM = 3, 2, 4


def fit_to_data(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """Adapt the model to a dataset's image size and classes, keeping its patch grid.

    The patch size scales with the image so the token count stays the preset's (e.g. 32 px /
    patch 4 → 64 px / patch 8); normalisation uses the CIFAR-10 statistics for CIFAR-like data
    and the ImageNet statistics otherwise.
    """
    m = config.model
    size = dataset.images.shape[1]
    grid = m.image_size // m.patch_size
    if size % grid:
        raise ValueError(f"image size {size} is not a multiple of the {grid}x{grid} patch grid")
    cifar_like = config.dataset.split(":")[-1].startswith(("cifar", "embedded", "synthetic"))
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if cifar_like else (IMAGENET_MEAN, IMAGENET_STD)
    model = m.replace(
        image_size=size,
        patch_size=size // grid,
        channels=dataset.images.shape[3],
        num_classes=dataset.num_classes,
        mean=mean,
        std=std,
    )
    return config.replace(model=model)


@flax.struct.dataclass
class TrainState:
    """What a train step updates: the step counter, the model's weights (``nnx.Param`` and,
    with BatchNorm, its running statistics ``nnx.BatchStat``: :data:`diffjax.vit.WEIGHTS`) and
    the optimizer state (of the ``nnx.Param`` part)."""

    step: jax.Array
    params: Any
    opt_state: Any


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to ``end_learning_rate``."""
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, total, config.end_learning_rate
    )


def _decays(path) -> bool:
    """Weight decay applies to weight matrices ("kernel" parameters) only."""
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return "kernel" in names


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW on :func:`learning_rate_schedule`, after optional global-norm clipping."""
    tx = optax.adamw(
        learning_rate_schedule(config, steps_per_epoch),
        b1=config.adam_b1,
        b2=config.adam_b2,
        weight_decay=config.weight_decay,
        mask=lambda params: jax.tree_util.tree_map_with_path(lambda p, _: _decays(p), params),
    )
    if config.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx


@functools.cache
def _graphdef(model_config: ViTConfig) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: ViT(model_config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract, WEIGHTS)[0]


@functools.partial(jax.jit, static_argnames=("config", "steps_per_epoch"))
def init_state(config: TrainConfig, steps_per_epoch: int) -> TrainState:
    """Freshly initialised parameters (seed ``config.seed``) and optimizer state, at step 0.

    Jitted: one compilation instead of one per parameter shape; the values are those of
    ``ViT(config.model, rngs=nnx.Rngs(config.seed))``.
    """
    model = ViT(config.model, rngs=nnx.Rngs(config.seed))
    params = nnx.state(model, WEIGHTS)
    opt_state = make_optimizer(config, steps_per_epoch).init(params.filter(nnx.Param))
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Per-example cross-entropy against (1 − s)·onehot + s/K: logits [B, K], labels [B] → [B]."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _frozen(module: nnx.Module) -> nnx.Module:
    """The same module with its parameters behind ``stop_gradient`` (no tangents flow in)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def attention_sigmas(model: ViT, x: jax.Array, key: jax.Array, iters: int) -> jax.Array:
    """σmax(∂Attn_l/∂u) at u = LN1(h_l) for every layer and image, differentiable in the model.

    The top right singular vector v of each Jacobian J is approximated by ``iters`` steps of
    power iteration (:func:`diffjax.analysis.power_iteration`, JVP/VJP products, start vector
    from ``key``) on a gradient-stopped copy of the layer: v is the vector that entered the last
    step, i.e. the start vector after ``iters − 1`` refinements (``iters = 1``: the random start
    vector itself). The estimate is then σ̂ = ‖J v‖, recomputed with gradients. σ̂ ≤ σmax
    always, and at the top singular vector ∇σ̂ = ∇σmax (for a simple σmax, ∂σ = uᵀ ∂J v: the
    envelope theorem), so its gradient is that of the exact constant up to the power
    iteration's error.

    Args:
      model: a per-layer (``scan_layers=False``) ViT / DiffViT, eval mode (no dropout).
      x: [B, H, W, C] images in [0, 1].
      key: start vectors (one per layer and image).
      iters: power-iteration steps (≥ 1); v has ``iters − 1`` refinements.

    Returns:
      [depth, B] estimates σ̂ (float, the model's dtype).
    """
    h = model.embed(x)
    sigmas = []
    for layer, blk in enumerate(model.blocks):
        u = blk.attention_input(h)
        frozen = _frozen(blk.attn)
        keys = jax.random.split(jax.random.fold_in(key, layer), u.shape[0])

        def one(u1, k, blk=blk, frozen=frozen):
            u0 = jax.lax.stop_gradient(u1)
            found = top_singular_values(lambda z: frozen(z[None])[0], u0, k=1, key=k,
                                        max_iters=iters, tol=0.0, method="power")  # fmt: skip
            v = found.right[0].reshape(u0.shape)
            _, jv = jax.jvp(lambda z: blk.attn(z[None])[0], (u1,), (v,))
            return jnp.linalg.norm(jv)

        sigmas.append(jax.vmap(one)(u, keys))
        h = blk(h)
    return jnp.stack(sigmas)


def robust_schedule(config: TrainConfig, steps_per_epoch: int, step: jax.Array):
    """(ε, κ, β) of the step that starts at ``step`` (0-based; may be traced).

    ε = 0 for the first ``robust_warmup_epochs``, then grows linearly to ``robust_eps`` over
    ``robust_ramp_epochs`` and stays there; κ (the natural loss's weight) goes from
    ``robust_kappa_start`` to ``robust_kappa_end`` and CROWN-IBP's β from 1 to 0 over the
    same ramp (Zhang et al. 2020). Functions of the step alone, so a resumed run trains
    exactly as an uninterrupted one. Float32 scalars.
    """
    warmup = config.robust_warmup_epochs * steps_per_epoch
    ramp = config.robust_ramp_epochs * steps_per_epoch
    t = jnp.asarray(step, jnp.float32) - warmup
    progress = jnp.clip(t / ramp, 0.0, 1.0) if ramp > 0 else (t >= 0).astype(jnp.float32)
    eps = jnp.where(t >= 0, config.robust_eps * progress, 0.0)
    kappa = config.robust_kappa_start + (config.robust_kappa_end - config.robust_kappa_start) * (
        progress
    )
    return eps, kappa, 1.0 - progress


def robust_logits(model: ViT, x: jax.Array, labels: jax.Array, eps: jax.Array, beta: jax.Array,
                  key: jax.Array, config: TrainConfig) -> jax.Array:  # fmt: skip
    """The logits the robust loss reads, [B, K], for ``config.robust_training``.

    ``"pgd"``: the model's logits at the PGD example (gradient-stopped parameters for the
    attack, then the logits with gradients); ``"ibp"``/``"crown-ibp"``: −(lower bounds of
    z_c − z_j) over B∞(x, ε) ∩ [0, 1]^d, 0 at the label (CE of these is an upper bound of the
    worst-case CE over the ball). ``model`` is in evaluation mode.
    """
    if config.robust_training == "pgd":
        attack = PGDConfig(eps=config.robust_eps, steps=config.pgd_steps,
                           step_size=config.pgd_step_size)  # fmt: skip
        fn = model_function(_frozen(model))
        eps_b = jnp.full(x.shape[0], eps, jnp.float32)
        adv = pgd(fn, x, labels, key, attack, eps=eps_b, compact=False).adv_images
        return model(jax.lax.stop_gradient(adv))
    beta = beta if config.robust_training == "crown-ibp" else None
    return -verify.training_margins(model, x, labels, eps, beta)


def _step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    config: TrainConfig,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer step of :func:`train_step` (traced by both jitted steps)."""
    graphdef = _graphdef(config.model)
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    aug_key, dropout_key = jax.random.split(key)
    x = to_unit_range(augment(aug_key, images, config.crop_padding, config.flip))
    if config.noise_sigma > 0:
        noise_key = jax.random.fold_in(key, NOISE_STREAM)
        x = x + config.noise_sigma * jax.random.normal(noise_key, x.shape, x.dtype)

    # Gradients and the optimizer act on the parameters; BatchNorm's running statistics (empty
    # without BatchNorm) are what the training-mode forward pass leaves in the model.
    params, stats = state.params.filter(nnx.Param), state.params.filter(nnx.BatchStat)

    def robust_loss(params, logits, natural):
        """κ·natural + (1 − κ)·CE(robust logits) and the metrics; at ε = 0 the natural loss
        and logits themselves (the natural step exactly, no bound computed)."""
        eps, kappa, beta = robust_schedule(config, steps_per_epoch, state.step)

        def robust():
            model = nnx.merge(graphdef, params, stats, copy=True)
            model.eval()  # the bounds are of the model as certified: running statistics
            z = robust_logits(model, x, labels, eps, beta,
                              jax.random.fold_in(key, PGD_STREAM), config)  # fmt: skip
            ce = smoothed_cross_entropy(z, labels, config.label_smoothing).mean()
            return kappa * natural + (1 - kappa) * ce, ce, z

        loss, ce, z = jax.lax.cond(eps > 0, robust, lambda: (natural, natural, logits))
        metrics = {"robust_loss": ce, "robust_accuracy": jnp.mean(jnp.argmax(z, -1) == labels),
                   "robust_eps": eps, "kappa": kappa}  # fmt: skip
        if config.robust_training == "crown-ibp":
            metrics["beta"] = beta
        return loss, metrics

    def loss_fn(params):
        # copy: the statistics' variables are made inside this trace, where BatchNorm sets them.
        model = nnx.merge(graphdef, params, stats, copy=True)
        model.train()  # BatchNorm: the batch's statistics, updating the running ones
        rngs = nnx.Rngs(dropout=dropout_key) if config.model.dropout > 0 else None
        logits = model(x, rngs=rngs)
        loss = smoothed_cross_entropy(logits, labels, config.label_smoothing).mean()
        aux = {"logits": logits, "stats": nnx.state(model, nnx.BatchStat)}
        if config.robust_training != "none":
            loss, aux["robust"] = robust_loss(params, logits, loss)
        objective = loss
        if config.lipschitz_penalty > 0:
            sigma = attention_sigmas(
                model, x[: config.lipschitz_examples], jax.random.fold_in(key, POWER_STREAM),
                config.lipschitz_iters,
            ).mean()  # fmt: skip
            objective = loss + config.lipschitz_penalty * sigma
            aux["attention_sigma"] = sigma
        return objective, (loss, aux)

    (_, (loss, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    logits, stats = aux.pop("logits"), aux.pop("stats")
    aux.update(aux.pop("robust", {}))
    tx = make_optimizer(config, steps_per_epoch)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = nnx.merge_state(optax.apply_updates(params, updates), stats)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": learning_rate_schedule(config, steps_per_epoch)(state.step),
        **aux,
    }
    return TrainState(state.step + 1, params, opt_state), metrics


@functools.partial(jax.jit, static_argnames=("config", "steps_per_epoch"), donate_argnums=0)
def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    config: TrainConfig,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch.

    Args:
      state: replicated training state (donated).
      images: [B, H, W, C] uint8, sharded along B.
      labels: [B] int32, sharded along B.
      config: the run's configuration (static).
      steps_per_epoch: steps per epoch, for the schedule (static).

    Returns:
      (new state, metrics): ``loss`` (smoothed cross-entropy), ``accuracy`` (on the augmented
      batch), ``grad_norm`` (before clipping), ``learning_rate`` (used by this step); scalars.
      With ``lipschitz_penalty`` also ``attention_sigma``, the mean σ̂ of
      :func:`attention_sigmas` (the objective is loss + β · attention_sigma). With
      ``robust_training``, ``loss`` is κ·CE(natural) + (1 − κ)·CE(robust) and the metrics add
      ``robust_loss``, ``robust_accuracy`` (argmax of the robust logits is the label),
      ``robust_eps``, ``kappa`` and (CROWN-IBP) ``beta`` of :func:`robust_schedule`.
    """
    return _step(state, images, labels, config, steps_per_epoch)


@functools.partial(jax.jit, static_argnames=("config", "steps_per_epoch", "mesh"), donate_argnums=0)
def resident_train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    *,
    config: TrainConfig,
    steps_per_epoch: int,
    mesh: jax.sharding.Mesh,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_step` on batch ``state.step mod steps_per_epoch`` of a device-resident set.

    Args:
      state: replicated training state (donated).
      images: [n, H, W, C] uint8, the whole training set, replicated (not donated).
      labels: [n] int32, replicated.
      order: [steps_per_epoch · B] int32, the epoch's permutation (its first full batches),
        replicated; batch i is ``order[i·B : (i+1)·B]``, as :func:`train_batches` cuts it.
      config, steps_per_epoch: as for :func:`train_step` (static).
      mesh: the data mesh (static): the gathered batch is split along B over it, as the
        host-fed batch is.

    Returns:
      what :func:`train_step` returns for that batch.
    """
    b = config.batch_size
    i = state.step % steps_per_epoch
    idx = jax.lax.dynamic_slice_in_dim(order, i * b, b)
    split = sharding.batch_sharding(mesh)
    x = jax.lax.with_sharding_constraint(images[idx], split)
    y = jax.lax.with_sharding_constraint(labels[idx], split)
    return _step(state, x, y, config, steps_per_epoch)


@functools.partial(jax.jit, static_argnames=("model_config",))
def eval_step(
    params, images: jax.Array, labels: jax.Array, mask: jax.Array, *, model_config: ViTConfig
) -> dict[str, jax.Array]:
    """Masked sums over one evaluation batch.

    Args:
      params: the model's weights (``nnx.State`` of :data:`diffjax.vit.WEIGHTS`).
      images: [B, H, W, C] uint8; labels: [B] int32; mask: [B] bool (False on padding).

    Returns:
      ``correct`` (float32 count), ``loss`` (sum of plain cross-entropy), ``count`` (int32),
      ``nonfinite`` (int32 count of examples whose logits are not all finite).
    """
    logits = nnx.merge(_graphdef(model_config), params)(to_unit_range(images))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    # argmax of NaN logits is class 0: without this count, label-0 examples would look correct
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    correct = (jnp.argmax(logits, -1) == labels) & finite
    return {
        "correct": jnp.sum(jnp.where(mask, correct, False).astype(jnp.float32)),
        "loss": jnp.sum(jnp.where(mask, ce, 0.0)),
        "count": jnp.sum(mask.astype(jnp.int32)),
        "nonfinite": jnp.sum((mask & ~finite).astype(jnp.int32)),
    }


def evaluate_params(
    params, model_config: ViTConfig, dataset: Dataset, batch_size: int, mesh
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``params`` over every example of ``dataset`` once.

    Raises:
      FloatingPointError: the model's logits are not finite on some example (no accuracy of
        such a model is meaningful).
    """
    rows = sharding.process_rows(batch_size, mesh)
    totals = None
    for images, labels, mask in eval_batches(dataset, batch_size, rows):
        batch = sharding.shard_batch((images, labels, mask), mesh)
        sums = eval_step(params, *batch, model_config=model_config)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    if count != len(dataset):
        raise RuntimeError(f"evaluated {count} examples, expected {len(dataset)}")
    if totals["nonfinite"]:
        raise FloatingPointError(
            f"the model's logits are NaN or infinite on {int(totals['nonfinite'])} of {count} "
            f"examples of {dataset.name}: not a usable model (NaN or infinite parameters?)"
        )
    return {
        "test_accuracy": float(totals["correct"]) / count,
        "test_loss": float(totals["loss"]) / count,
        "test_count": count,
    }


def evaluate(model: ViT, dataset: Dataset, batch_size: int = 500, mesh=None) -> dict[str, float]:
    """Test accuracy and cross-entropy of ``model`` on ``dataset`` (each example exactly once).

    Args:
      model: a ViT whose config matches the dataset's images.
      dataset: the evaluation split.
      batch_size: global evaluation batch size (a multiple of the device count).
      mesh: the data mesh; default all devices.

    Returns:
      ``test_accuracy`` (fraction), ``test_loss`` (mean nats), ``test_count``.
    """
    mesh = sharding.data_mesh() if mesh is None else mesh
    params = sharding.replicate(nnx.state(model, WEIGHTS), mesh)
    return evaluate_params(params, model.config, dataset, batch_size, mesh)


def uses_resident_data(config: TrainConfig, dataset: Dataset) -> bool:
    """Whether :func:`train` keeps ``dataset`` (the training split) on the devices.

    ``config.resident_data`` when set; otherwise whether the images, labels and one epoch's
    int32 permutation fit :data:`RESIDENT_DATA_BYTES` (each device holds a whole copy).
    """
    if config.resident_data is not None:
        return config.resident_data
    return dataset.images.nbytes + dataset.labels.nbytes + 4 * len(dataset) <= RESIDENT_DATA_BYTES


def _prepare_run_dir(config: TrainConfig, run_dir: pathlib.Path) -> None:
    """Write config.json, or check that an existing run was started with the same config."""
    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"corrupt run config {path}: {e}") from e
        if existing != config.to_dict():
            ours = config.to_dict()
            diff = sorted(k for k in set(existing) | set(ours) if existing.get(k) != ours.get(k))
            raise CheckpointError(
                f"{run_dir} holds a run with a different config (fields {diff} differ); "
                "use a new run directory or the original config"
            )
    elif jax.process_index() == 0:
        write_json_atomic(path, config.to_dict())


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (a resumed run rewrites what follows), each
    (kind, step) once and in step order: a record repeated or out of order (two processes once
    wrote one run) is dropped."""
    if not path.is_file():
        return
    kept, seen, last = [], set(), 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line a killed run was writing
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            continue
        key = (record.get("kind"), record.get("step", 0))
        if last <= key[1] <= step and key not in seen:
            kept.append(line)
            seen.add(key)
            last = key[1]
    write_text_atomic(path, "".join(f"{ln}\n" for ln in kept))


def check_finite(metrics: list[dict], last_step: int) -> None:
    """Raise FloatingPointError if a step's loss or gradient norm is not finite.

    Args:
      metrics: per-step train metrics (host values) of steps ``last_step - len + 1 ..
        last_step``.
    """
    for i, m in enumerate(metrics):
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            step = last_step - len(metrics) + 1 + i
            if "robust_loss" in m and not np.isfinite(m["robust_loss"]):
                # Interval bounds of a naturally trained model can be vacuous even at a tiny ε
                # (in a DiffViT the per-head RMSNorm divides by a mean of squares whose lower
                # bound nears 0), and an infinite bound has no gradient.
                raise FloatingPointError(
                    f"training diverged at step {step}: the robust loss is {m['robust_loss']} "
                    f"at robust_eps {m.get('robust_eps')} (the certified bounds of the margins "
                    "overflowed); start the ε ramp from the first step (robust_warmup_epochs=0) "
                    "or ramp more slowly. The run directory keeps the last finite checkpoint."
                )
            raise FloatingPointError(
                f"training diverged at step {step}: loss {m['loss']}, gradient norm "
                f"{m['grad_norm']}; lower the learning rate or set grad_clip. The run "
                "directory keeps the last finite checkpoint."
            )


def _check_data(config: TrainConfig, train_data: Dataset, test_data: Dataset) -> None:
    m = config.model
    want = (m.image_size, m.image_size, m.channels)
    for split, ds in (("train", train_data), ("test", test_data)):
        if ds.images.shape[1:] != want:
            raise ValueError(
                f"{split} images are {ds.images.shape[1:]}, the model takes {want}; "
                "use fit_to_data(config, dataset)"
            )
        if ds.num_classes > m.num_classes:
            raise ValueError(
                f"{split} data has {ds.num_classes} classes, the model {m.num_classes}"
            )


def train(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    train_data: Dataset | None = None,
    test_data: Dataset | None = None,
    devices: list | None = None,
    progress: Callable[[dict], None] | None = None,
) -> tuple[ViT, dict]:
    """Train (or resume training) a model; write the run directory ``workdir``.

    Args:
      config: the run's configuration.
      workdir: the run directory. If it holds checkpoints of the same config, training resumes
        from the latest one; a different config raises :class:`CheckpointError`.
      data_dir: where :func:`diffjax.data.load_dataset` looks for ``config.dataset``.
      train_data, test_data: datasets to use instead of loading ``config.dataset``.
      devices: devices of the data mesh (default: all).
      progress: called with every record written to ``metrics.jsonl`` plus a ``"start"``
        record (``kind``, ``step``, ``total_steps``, ``steps_per_epoch``) and a ``"done"``
        record (the summary); for progress bars.

    Returns:
      (the final model, summary): the summary holds the final test metrics, the best
      checkpoint's step and test accuracy, steps, epochs and training throughput.
    """
    if train_data is None:
        train_data = load_dataset(config.dataset, "train", data_dir)
    if test_data is None:
        test_data = load_dataset(config.dataset, "test", data_dir)
    if config.train_examples is not None:
        train_data = train_data.take(config.train_examples)
    if config.test_examples is not None:
        test_data = test_data.take(config.test_examples)
    _check_data(config, train_data, test_data)
    if config.robust_training in ("ibp", "crown-ibp"):
        verify.check_trainable(config.model)  # the verifier's own refusal, before any step
    mesh = sharding.data_mesh(devices)
    rows = sharding.process_rows(config.batch_size, mesh)
    sharding.local_batch_size(config.eval_batch_size, mesh)
    spe = steps_per_epoch(len(train_data), config.batch_size)
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _prepare_run_dir(config, workdir)

    total_steps = config.epochs * spe
    eval_every = config.eval_every_epochs * spe
    writer = jax.process_index() == 0
    metrics_path = workdir / METRICS_FILE
    events = records.EventLog(workdir)  # TensorBoard's copy of metrics.jsonl
    emit = progress or (lambda record: None)

    def record(entry: dict) -> None:
        if writer:
            try:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
            except OSError as e:  # a full disk: write errors name no file
                raise OSError(e.errno, f"cannot append to {metrics_path}: {e.strerror}") from e
            events.write(entry)
        emit(entry)

    state = sharding.replicate(init_state(config=config, steps_per_epoch=spe), mesh)
    with TrainCheckpoints(workdir, keep=config.keep_checkpoints) as ckpts:
        start = ckpts.latest_step() or 0
        if start:
            params, opt_state = ckpts.restore(start, state.params, state.opt_state)
            state = TrainState(sharding.replicate(jnp.int32(start), mesh), params, opt_state)
        if writer:  # records past the checkpoint are recomputed below
            _truncate_metrics(metrics_path, start)
        emit({"kind": "start", "step": start, "total_steps": total_steps, "steps_per_epoch": spe})

        resident = uses_resident_data(config, train_data)
        if resident:
            data = sharding.replicate_host((train_data.images, train_data.labels), mesh)
            order_epoch, order = None, None
        else:
            batches = train_batches(train_data, config.batch_size, config.seed, start, rows)
        pending: list[dict] = []
        final_eval = None
        timed_images, timed_seconds, interval_images = 0, 0.0, 0
        interval_start = time.perf_counter()
        for step in range(start + 1, total_steps + 1):
            if resident:  # this step's batch is gathered on the devices from the epoch's order
                epoch = (step - 1) // spe
                if epoch != order_epoch:
                    perm = epoch_permutation(len(train_data), config.seed, epoch)
                    order = perm[: spe * config.batch_size].astype(np.int32)
                    order = sharding.replicate_host(order, mesh)
                    order_epoch = epoch
                state, metrics = resident_train_step(
                    state, *data, order, config=config, steps_per_epoch=spe, mesh=mesh
                )
            else:
                images, labels = sharding.shard_batch(next(batches), mesh)
                state, metrics = train_step(
                    state, images, labels, config=config, steps_per_epoch=spe
                )
            pending.append(metrics)
            if step == start + 1:  # keep compilation out of the throughput
                jax.block_until_ready(metrics)
                interval_start = time.perf_counter()
            else:
                interval_images += config.batch_size
            logged = step % config.log_every_steps == 0 or step % spe == 0
            evaluated = step % eval_every == 0 or step == total_steps
            saved = evaluated or (
                config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            )
            if pending and (logged or saved):  # never log or save a diverged state
                check_finite(jax.device_get(pending), step)
            if logged or step == total_steps:
                means = {
                    k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]
                }
                elapsed = time.perf_counter() - interval_start
                timed_images += interval_images
                timed_seconds += elapsed
                record(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": step / spe,
                        **means,
                        "img_per_s": interval_images / elapsed if interval_images else None,
                        "lambda": nnx.merge(_graphdef(config.model), state.params).lambdas(),
                    }
                )
                pending, interval_images = [], 0
            if evaluated:
                final_eval = evaluate_params(
                    state.params, config.model, test_data, config.eval_batch_size, mesh
                )
                record({"kind": "eval", "step": step, "epoch": step / spe, **final_eval})
                ckpts.save(step, state.params, state.opt_state, final_eval)
            elif saved:
                ckpts.save(step, state.params, state.opt_state)
            if not pending:  # evaluation time is not training time
                interval_start = time.perf_counter()
        if final_eval is None:  # the run had already finished
            final_eval = ckpts.metrics(total_steps) or evaluate_params(
                state.params, config.model, test_data, config.eval_batch_size, mesh
            )
        best = ckpts.best_step()
        best_metrics = ckpts.metrics(best) if best is not None else None

    model = nnx.merge(_graphdef(config.model), jax.device_get(state.params))
    summary = {
        "final": final_eval,
        "best_step": best,
        "best_test_accuracy": None if best_metrics is None else best_metrics["test_accuracy"],
        "steps": total_steps,
        "epochs": config.epochs,
        "resumed_from_step": start,
        "train_img_per_s": timed_images / timed_seconds if timed_images else None,
        "resident_data": resident,
        "devices": [str(d) for d in mesh.devices.flat],
        "jax_version": jax.__version__,
    }
    if writer:
        write_json_atomic(workdir / RESULTS_FILE, summary)
    emit({"kind": "done", **summary})
    return model, summary
