"""Next-token training of the language models, with the conventions of :mod:`diffjax.train`.

    config = LMTrainConfig(model=LMConfig(attention="diff"), steps=2000)
    model, summary = train_lm(config, "runs/lm_diff")   # resumes if the run exists

One jitted step; AdamW (decay on kernels only; β = (0.9, 0.98) as in the Differential
Transformer paper) with linear warmup and cosine decay; global-norm clipping. Each step draws
``batch_size`` rows: a fraction ``retrieval_fraction`` are retrieval sequences
(:class:`~diffjax.lm_config.RetrievalTask`), the rest random windows of the training corpus.
Everything a step uses comes from ``fold_in(key(seed), step)`` on the device, so a run resumed
from a checkpoint computes exactly what an uninterrupted one does. The run directory is that of
:func:`diffjax.train.train` (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``results.json``); checkpoints are :class:`diffjax.checkpoint.TrainCheckpoints`, the best one by
validation next-byte accuracy (``test_accuracy``). :func:`load_lm` returns the best model.

Evaluation (fixed keys, the held-out tail of the corpus): mean next-byte cross-entropy
(``val_loss``, nats), its perplexity ``exp(val_loss)`` and bits per byte, next-byte accuracy, and
the retrieval accuracy (argmax at the answer position = the answer) on ``eval_retrieval``
sequences whose filler comes from the held-out text.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffjax import records
from diffjax.checkpoint import CONFIG_FILE, CheckpointError, TrainCheckpoints, write_json_atomic
from diffjax.data import text
from diffjax.lm import LM, LMConfig
from diffjax.lm_config import LMTrainConfig
from diffjax.train import (
    METRICS_FILE,
    RESULTS_FILE,
    TrainState,
    _decays,
    _prepare_run_dir,
    _truncate_metrics,
    check_finite,
)

EVAL_TAG = 2**20  # eval keys fold this into key(seed): never a training step's key


def learning_rate_schedule(config: LMTrainConfig) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``end_learning_rate``."""
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup_steps, config.steps), config.steps,
        config.end_learning_rate,
    )  # fmt: skip


def make_optimizer(config: LMTrainConfig) -> optax.GradientTransformation:
    """AdamW on :func:`learning_rate_schedule` (decay on kernels only), after clipping."""
    tx = optax.adamw(
        learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
        weight_decay=config.weight_decay,
        mask=lambda params: jax.tree_util.tree_map_with_path(lambda p, _: _decays(p), params),
    )  # fmt: skip
    if config.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx


@functools.cache
def _graphdef(model_config: LMConfig) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: LM(model_config, rngs=nnx.Rngs(0))), nnx.Param)[0]


@functools.partial(jax.jit, static_argnames=("config",))
def init_state(config: LMTrainConfig) -> TrainState:
    """Parameters of ``LM(config.model, rngs=nnx.Rngs(config.seed))`` and a fresh optimizer."""
    params = nnx.split(LM(config.model, rngs=nnx.Rngs(config.seed)), nnx.Param)[1]
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(config).init(params))


def sequence_loss(model: LM, tokens: jax.Array, weights: jax.Array):
    """Weighted next-token cross-entropy of tokens [B, N]: (Σ w·CE / Σ w, accuracy), with
    weights [B, N−1] on the predictions of tokens 1..N−1."""
    logits = model(tokens[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    correct = jnp.argmax(logits, -1) == tokens[:, 1:]
    return jnp.sum(ce * weights) / jnp.sum(weights), jnp.sum(correct * weights) / jnp.sum(weights)


def _answer_weights(config: LMTrainConfig, rows: int) -> jax.Array:
    w = jnp.ones((rows, config.retrieval.length - 1))
    return w.at[:, -1].set(config.answer_weight)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=0)
def train_step(state: TrainState, train_corpus: jax.Array, *, config: LMTrainConfig):
    """One optimizer step on freshly drawn rows; returns (state, metrics: loss, accuracy,
    grad_norm, learning_rate)."""
    graphdef = _graphdef(config.model)
    k_text, k_ret = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), state.step))
    r = config.retrieval_rows
    c = config.batch_size - r
    corpus_rows = text.windows(k_text, train_corpus, c, config.seq_len + 1) if c else None
    ret_rows = text.retrieval_batch(k_ret, train_corpus, config.retrieval, r)[0] if r else None

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        terms = []
        if c:
            terms.append((c, *sequence_loss(model, corpus_rows, jnp.ones((c, config.seq_len)))))
        if r:
            terms.append((r, *sequence_loss(model, ret_rows, _answer_weights(config, r))))
        loss = sum(n * t for n, t, _ in terms) / config.batch_size
        return loss, sum(n * a for n, _, a in terms) / config.batch_size

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    tx = make_optimizer(config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate_schedule(config)(state.step)}  # fmt: skip
    return TrainState(
        state.step + 1, optax.apply_updates(state.params, updates), opt_state
    ), metrics


@functools.partial(jax.jit, static_argnames=("config",))
def _eval_sums(params, val_corpus: jax.Array, key: jax.Array, *, config: LMTrainConfig):
    model = nnx.merge(_graphdef(config.model), params)
    rows = text.windows(key, val_corpus, config.eval_windows, config.seq_len + 1)
    logits = model(rows[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, rows[:, 1:])
    correct = jnp.argmax(logits, -1) == rows[:, 1:]
    tokens, answers, _ = text.retrieval_batch(
        jax.random.fold_in(key, 1), val_corpus, config.retrieval, config.eval_retrieval
    )
    pred = jnp.argmax(model(tokens[:, :-1])[:, -1], -1)
    return jnp.mean(ce), jnp.mean(correct), jnp.mean(pred == answers), jnp.all(jnp.isfinite(ce))


def evaluate_lm(params, config: LMTrainConfig, val_corpus) -> dict[str, float]:
    """Validation loss (nats/byte), perplexity, bits/byte, next-byte and retrieval accuracy."""
    key = jax.random.fold_in(jax.random.key(config.seed), EVAL_TAG)
    loss, acc, ret, finite = jax.device_get(
        _eval_sums(params, jnp.asarray(val_corpus), key, config=config)
    )
    if not finite:
        raise FloatingPointError("the model's validation loss is not finite: not a usable model")
    loss = float(loss)
    return {"val_loss": loss, "val_perplexity": math.exp(loss),
            "val_bits_per_byte": loss / math.log(2), "test_accuracy": float(acc),
            "retrieval_accuracy": float(ret)}  # fmt: skip


def train_lm(
    config: LMTrainConfig,
    workdir: str | os.PathLike,
    *,
    progress: Callable[[dict], None] | None = None,
) -> tuple[LM, dict]:
    """Train (or resume) a language model in the run directory ``workdir``.

    Args:
      config: the run's configuration; a different config in an existing ``workdir`` raises
        :class:`~diffjax.checkpoint.CheckpointError`.
      progress: called with each ``metrics.jsonl`` record and ``"start"``/``"done"`` records
        (``experiments.common.TrainBar`` draws a progress bar from them).

    Returns:
      (the final model, summary: final evaluation, best step, steps, tokens/s, corpus digest).
    """
    corpus = text.load_corpus(config.corpus)
    train_corpus, val_corpus = text.split_corpus(corpus, config.val_fraction)
    train_corpus = jnp.asarray(train_corpus)
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _prepare_run_dir(config, workdir)
    metrics_path = workdir / METRICS_FILE
    events = records.EventLog(workdir)  # TensorBoard's copy of metrics.jsonl
    emit = progress or (lambda record: None)

    def record(entry: dict) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        events.write(entry)
        emit(entry)

    state = init_state(config=config)
    spe = max(1, train_corpus.shape[0] // (config.batch_size * config.seq_len))
    final, timed_tokens, timed_seconds = None, 0, 0.0
    tokens_per_step = (config.batch_size - config.retrieval_rows) * config.seq_len + (
        config.retrieval_rows * (config.retrieval.length - 1)
    )
    with TrainCheckpoints(workdir, keep=config.keep_checkpoints) as ckpts:
        start = ckpts.latest_step() or 0
        if start:
            params, opt_state = ckpts.restore(start, state.params, state.opt_state)
            state = TrainState(jnp.int32(start), params, opt_state)
        _truncate_metrics(metrics_path, start)
        emit({"kind": "start", "step": start, "total_steps": config.steps, "steps_per_epoch": spe})
        pending, t0 = [], time.perf_counter()
        for step in range(start + 1, config.steps + 1):
            state, metrics = train_step(state, train_corpus, config=config)
            pending.append(metrics)
            if step == start + 1:  # compilation is not throughput
                jax.block_until_ready(metrics)
                t0, pending_tokens = time.perf_counter(), 0
            else:
                pending_tokens += tokens_per_step
            evaluated = step % config.eval_every_steps == 0 or step == config.steps
            saved = evaluated or (
                config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            )
            logged = step % config.log_every_steps == 0 or step == config.steps
            if logged or saved:
                host = jax.device_get(pending)
                check_finite(host, step)
                if logged:
                    elapsed = time.perf_counter() - t0
                    timed_tokens, timed_seconds = (
                        timed_tokens + pending_tokens,
                        timed_seconds + elapsed,
                    )
                    means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                    lam = nnx.merge(_graphdef(config.model), state.params).lambdas()
                    record({"kind": "train", "step": step, "epoch": step / spe, **means,
                            "tokens_per_s": pending_tokens / elapsed if pending_tokens else None,
                            "lambda": lam})  # fmt: skip
                    pending, pending_tokens, t0 = [], 0, time.perf_counter()
            if evaluated:
                final = evaluate_lm(state.params, config, val_corpus)
                record({"kind": "eval", "step": step, "epoch": step / spe, **final})
                ckpts.save(step, state.params, state.opt_state, final)
                t0 = time.perf_counter()
            elif saved:
                ckpts.save(step, state.params, state.opt_state)
        if final is None:  # the run had finished before
            final = ckpts.metrics(config.steps) or evaluate_lm(state.params, config, val_corpus)
        best = ckpts.best_step()
    model = nnx.merge(_graphdef(config.model), jax.device_get(state.params))
    summary = {"final": final, "best_step": best, "steps": config.steps,
               "resumed_from_step": start,
               "train_tokens_per_s": timed_tokens / timed_seconds if timed_tokens else None,
               "corpus": {"name": config.corpus, **text.corpus_digest(corpus)},
               "jax_version": jax.__version__}  # fmt: skip
    write_json_atomic(workdir / RESULTS_FILE, summary)
    emit({"kind": "done", **summary})
    return model, summary


def load_lm(run_dir: str | os.PathLike, step: int | None = None) -> tuple[LM, LMTrainConfig]:
    """The model of a training run (its best checkpoint, else the latest, or ``step``)."""
    run_dir = pathlib.Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {CONFIG_FILE}: not an LM training run")
    try:
        config = LMTrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise CheckpointError(f"corrupt LM run config {path}: {e}") from e
    state = jax.eval_shape(lambda: init_state(config=config))
    with TrainCheckpoints(run_dir, read_only=True) as ckpts:
        step = step if step is not None else (ckpts.best_step() or ckpts.latest_step())
        if step is None:
            raise CheckpointError(f"{run_dir} has no checkpoints")
        params, _ = ckpts.restore(step, state.params, state.opt_state)
    return nnx.merge(_graphdef(config.model), params), config
