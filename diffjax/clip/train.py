"""Small contrastive CLIP / DiffCLIP training on labelled images with template captions.

Each image of class c is paired with a caption ``template.format(name_c)``, the template drawn
uniformly per example and step. The loss is CLIP's symmetric InfoNCE over the batch,

    L = ½ [CE(s·I Tᵀ, diag) + CE(s·T Iᵀ, diag)],   I, T unit-norm features, s = exp(logit_scale),

with the learnable log scale clamped to [0, ln 100] after every step (SLIP / SynthCLIP), AdamW
(weight decay on matrices only), linear warm-up then cosine decay. Images in a batch that share a
class may share a caption; they count as negatives of each other, as in CLIP training on web data.

Everything per step runs on device inside one jitted ``lax.scan`` over ``steps_per_call`` steps:
the epoch permutation, the gather, the random flip and the caption draw come from
``fold_in(key, step)``, so a run is a pure function of (model, data, config). The batch is
sharded over all devices.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from diffjax import sharding as shard
from diffjax.clip.config import MAX_LOG_LOGIT_SCALE
from diffjax.clip.model import CLIP
from diffjax.clip.tokenizer import Tokenizer, default_tokenizer
from diffjax.clip.zeroshot import check_templates
from diffjax.data import Dataset
from diffjax.records import EventLog

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """Hyper-parameters of :func:`train_contrastive`.

    Attributes:
      steps: optimiser steps.
      batch_size: image–caption pairs per step (a multiple of the device count).
      learning_rate: peak AdamW learning rate.
      weight_decay: AdamW decoupled weight decay (matrices and embeddings only).
      warmup_steps: linear warm-up from 0 to ``learning_rate``; cosine decay to 0 afterwards.
      b1, b2: AdamW moment decay rates (CLIP: 0.9, 0.98).
      flip: random horizontal flips.
      steps_per_call: steps per jitted scan (one host round trip each).
      seed: PRNG seed of the data order, flips and caption draws.
    """

    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    b1: float = 0.9
    b2: float = 0.98
    flip: bool = True
    steps_per_call: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "steps_per_call"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps], got {self.warmup_steps}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1, b2 must be in [0, 1), got {self.b1}, {self.b2}")


def contrastive_loss(logits: Array) -> Array:
    """Symmetric InfoNCE of [B, B] image-to-text logits whose diagonal holds the true pairs."""
    labels = jnp.arange(logits.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    return 0.5 * (jnp.mean(ce(logits, labels)) + jnp.mean(ce(logits.T, labels)))


def caption_tokens(
    class_names: Sequence[str],
    templates: Sequence[str],
    context_length: int,
    tokenizer: Tokenizer | None = None,
) -> np.ndarray:
    """Token ids of every (class, template) caption: [classes, templates, context] int32."""
    check_templates(class_names, templates)
    tokenizer = tokenizer or default_tokenizer()
    prompts = [t.format(name) for name in class_names for t in templates]
    tokens = tokenizer(prompts, context_length=context_length)
    return tokens.reshape(len(class_names), len(templates), context_length)


@functools.cache
def make_optimizer(config: ContrastiveConfig) -> optax.GradientTransformation:
    """AdamW with warm-up + cosine decay; weight decay only on parameters with ndim ≥ 2.

    Cached per config, so repeated runs with one config reuse the compiled training steps.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.steps
    )
    return optax.adamw(
        schedule,
        b1=config.b1,
        b2=config.b2,
        weight_decay=config.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
    )


def _batch(config: ContrastiveConfig, data, key: Array, step: Array):
    """The (images [B, H, W, C] float in [0, 1], tokens [B, context]) of ``step``, on device."""
    images, labels, captions = data
    n, b = images.shape[0], config.batch_size
    steps_per_epoch = n // b
    k_flip, k_cap = jax.random.split(jax.random.fold_in(key, step))
    perm = jax.random.permutation(jax.random.fold_in(key, -1 - step // steps_per_epoch), n)
    idx = jax.lax.dynamic_slice(perm, ((step % steps_per_epoch) * b,), (b,))
    x = images[idx].astype(jnp.float32) / 255.0
    if config.flip:
        x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1)), x[:, :, ::-1], x)
    t = captions[labels[idx], jax.random.randint(k_cap, (b,), 0, captions.shape[1])]
    sharding = shard.batch_sharding(shard.data_mesh())
    return (
        jax.lax.with_sharding_constraint(x, sharding),
        jax.lax.with_sharding_constraint(t, sharding),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _train_steps(graphdef, config: ContrastiveConfig, params, rest, opt_state, data, key, steps):
    """``len(steps)`` optimiser steps in one scan; returns (params, opt_state, losses)."""
    tx = make_optimizer(config)

    def loss_fn(params, x, t):
        return contrastive_loss(nnx.merge(graphdef, params, rest)(x, t))

    def step_fn(carry, step):
        params, opt_state = carry
        x, t = _batch(config, data, key, step)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, t)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        scale = params["logit_scale"]
        scale[...] = jnp.clip(scale[...], 0.0, MAX_LOG_LOGIT_SCALE)
        return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step_fn, (params, opt_state), steps)
    return params, opt_state, losses


def train_contrastive(
    model: CLIP,
    data: Dataset,
    templates: Sequence[str],
    config: ContrastiveConfig,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    logdir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Train ``model`` in place on ``data`` with template captions; return the per-step losses.

    Args:
      model: CLIP or DiffCLIP whose image size matches ``data``.
      data: uint8 images and labels; ``data.class_names`` fill the templates.
      templates: caption templates, one ``{}`` each (e.g. ``CIFAR_TEMPLATES``).
      config: hyper-parameters.
      tokenizer: default: the shipped CLIP BPE tokenizer.
      progress: show a tqdm bar.
      logdir: also write each step's loss (scalar ``train/loss``) as TensorBoard event files
        there (:class:`diffjax.records.EventLog`); ``None``: none.

    Returns:
      [config.steps] float32 training losses (the loss of each step's batch before its update).
    """
    c = config
    devices = jax.device_count()
    if c.batch_size % devices:
        raise ValueError(f"batch_size {c.batch_size} is not a multiple of {devices} devices")
    if len(data) < c.batch_size:
        raise ValueError(f"{len(data)} examples are fewer than one batch of {c.batch_size}")
    size = model.config.image_size
    if data.images.shape[1:] != (size, size, model.config.channels):
        raise ValueError(f"images {data.images.shape[1:]} do not fit the model's {size}×{size}")

    captions = caption_tokens(data.class_names, templates, model.config.context_length, tokenizer)
    arrays = tuple(jnp.asarray(a) for a in (data.images, data.labels, captions))
    key = jax.random.key(c.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = jax.jit(make_optimizer(c).init)(params)
    losses = []
    events = None if logdir is None else EventLog(logdir)
    with tqdm(total=c.steps, desc="contrastive", disable=not progress) as bar:
        for start in range(0, c.steps, c.steps_per_call):
            steps = jnp.arange(start, min(start + c.steps_per_call, c.steps))
            params, opt_state, chunk = _train_steps(
                graphdef, c, params, rest, opt_state, arrays, key, steps
            )
            losses.append(np.asarray(chunk))
            if events is not None:  # one host round trip per call already: no extra sync
                for step, loss in zip(np.asarray(steps), losses[-1], strict=True):
                    events.write({"loss": loss}, tag="train", step=int(step) + 1)
            bar.update(len(steps))
            bar.set_postfix(loss=f"{float(chunk[-1]):.3f}")
    nnx.update(model, params)
    return np.concatenate(losses).astype(np.float32)
