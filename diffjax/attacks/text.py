"""Attacks on language models: PGD on input embeddings, HotFlip and greedy coordinate gradient.

    tm = text_model(lm)                                  # embeddings → logits, and E [V, D]
    r = embedding_pgd(tm, tokens, editable, answer_pos, labels, key,
                      EmbeddingPGDConfig(eps=0.5, norm="l2", scope="token"))
    r = hotflip(tm, tokens, editable, answer_pos, labels, key, HotFlipConfig(budget=2))
    r = gcg(tm, tokens, editable, answer_pos, labels, key, GCGConfig(steps=20), targets=t)
    summarize_text(r, labels).as_dict()

The attacked prediction of example b is the next-token argmax at position ``answer_pos[b]``
(the logits there predict token ``answer_pos[b] + 1``, e.g. the answer of a retrieval prompt).
Untargeted, an attack succeeds when that argmax differs from ``labels[b]``; targeted, when it
equals ``targets[b]``. Only positions with ``editable[b, i]`` may change.

* :func:`embedding_pgd`: δ on the editable rows of the input embeddings h_0 = E[tokens]; ℓ∞ or
  ℓ2, the radius ε either per token (every row ‖δ_i‖ ≤ ε) or per sequence (‖δ‖ ≤ ε over all
  rows). For ℓ∞ the two scopes are the same set. Sign (ℓ∞) or normalised (ℓ2) steps of
  ``step_size``·ε/``steps`` from a random start in the ball, cross-entropy objective; the first
  δ that succeeds is kept.
* :func:`hotflip` (Ebrahimi et al. 2018): up to ``budget`` rounds; each ranks every single-token
  substitution by its first-order loss change (e_v − e_{t_i})·∂L/∂h_i, evaluates the
  ``candidates`` best exactly and applies the best one if it raises the loss. At most
  ``budget`` tokens change.
* :func:`gcg` (Zou et al. 2023): ``steps`` rounds; each takes the ``top_k`` tokens per editable
  position by the one-hot gradient, evaluates ``search_width`` single-token swaps among them
  exactly (all of them when there are no more), and moves to the best; the best sequence seen
  is returned.

Accounting as for the image attacks (:mod:`diffjax.attacks.accounting`): every returned input is
re-scored by the model in a separate forward pass, outside the attack (token attacks from the
token ids, through ``E[tokens]``), and success, norms and counts are computed from that
re-check; ``claimed`` keeps what the attack itself believed, so a disagreement is visible.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffjax.attacks.accounting import Summary, summarize
from diffjax.attacks.interface import (
    check_bool,
    check_eps,
    check_finite_logits,
    check_int,
    check_key,
    check_norm,
    check_positive,
)

Array = jax.Array


class TextModel(NamedTuple):
    """A language model as attacks see it (a pytree: it passes through ``jit``).

    Attributes:
      forward: input embeddings [B, N, D] → next-token logits [B, N, V].
      embedding: the token embedding matrix E [V, D]; h_0 = E[tokens].
    """

    forward: jax.tree_util.Partial
    embedding: Array

    def logits(self, tokens: Array) -> Array:
        """Next-token logits [B, N, V] of token ids [B, N]."""
        return self.forward(self.embedding[tokens])


def _lm_forward(graphdef, params, rest, h):
    return nnx.merge(graphdef, params, rest).from_embeddings(h)


def text_model(model) -> TextModel:
    """A :class:`diffjax.lm.LM` as a :class:`TextModel`, parameters as pytree leaves."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    forward = jax.tree_util.Partial(functools.partial(_lm_forward, graphdef), params, rest)
    return TextModel(forward, model.embedding_matrix())


@dataclasses.dataclass(frozen=True)
class EmbeddingPGDConfig:
    """PGD on the input embeddings (module docstring).

    Attributes:
      eps: radius ε (embedding units).
      norm: ``"linf"`` or ``"l2"``.
      scope: ``"token"`` (each editable row in its own ball) or ``"sequence"`` (one ball for
        all editable rows together).
      steps: gradient steps.
      step_size: step length in units of ε/steps.
      random_start: start uniformly inside the ball (ℓ∞) or on a random direction at radius
        ε/2 (ℓ2); ``False``: start at δ = 0.
      targeted: succeed on the target instead of away from the label.
    """

    eps: float
    norm: str = "l2"
    scope: str = "token"
    steps: int = 50
    step_size: float = 2.5
    random_start: bool = True
    targeted: bool = False

    def __post_init__(self):
        check_eps(self.eps)
        check_norm(self.norm)
        if self.scope not in ("token", "sequence"):
            raise ValueError(f"scope must be 'token' or 'sequence', got {self.scope!r}")
        check_int("steps", self.steps, 1)
        check_positive("step_size", self.step_size)
        check_bool("random_start", self.random_start)
        check_bool("targeted", self.targeted)


@dataclasses.dataclass(frozen=True)
class HotFlipConfig:
    """HotFlip: at most ``budget`` substituted tokens; ``candidates`` exact evaluations per
    round (of the first-order best substitutions)."""

    budget: int = 1
    candidates: int = 16
    targeted: bool = False

    def __post_init__(self):
        check_int("budget", self.budget, 1)
        check_int("candidates", self.candidates, 1)
        check_bool("targeted", self.targeted)


@dataclasses.dataclass(frozen=True)
class GCGConfig:
    """Greedy coordinate gradient: ``steps`` rounds of ``search_width`` exact single-token swaps
    drawn from the ``top_k`` gradient tokens of each editable position."""

    steps: int = 20
    top_k: int = 32
    search_width: int = 128
    targeted: bool = True

    def __post_init__(self):
        for name in ("steps", "top_k", "search_width"):
            check_int(name, getattr(self, name), 1)
        check_bool("targeted", self.targeted)


@flax.struct.dataclass
class TextAttackResult:
    """Per-example outcome of a text attack on B sequences; everything re-checked.

    Attributes:
      tokens: [B, N] the returned token ids (the clean ones for embedding PGD).
      delta: [B, N, D] the embedding perturbation (zeros for token attacks, whose change of
        embeddings is ``E[tokens] − E[clean]``, measured in the norms below).
      success: [B] from ``logits``: argmax ≠ label (untargeted) or = target; False if not finite.
      claimed: [B] what the attack itself reported.
      logits, clean_logits: [B, V] the re-scored answer-position logits, returned and clean.
      linf, l2: [B] ‖Δh‖∞ and ‖Δh‖₂ of the whole sequence's embedding change.
      l2_token: [B] max over positions of the per-token ‖Δh_i‖₂.
      changed: [B] int32, tokens substituted (0 for embedding PGD).
      model_calls: [B] int32, forward(+backward) evaluations until the example succeeded (or the
        attack ended); a batch of candidates counts one call per candidate.
    """

    tokens: Array
    delta: Array
    success: Array
    claimed: Array
    logits: Array
    clean_logits: Array
    linf: Array
    l2: Array
    l2_token: Array
    changed: Array
    model_calls: Array


def _check(model: TextModel, tokens, editable, answer_pos, labels, targets, targeted):
    if not isinstance(model, TextModel):
        raise ValueError(f"model must be a TextModel (see text_model), got {type(model).__name__}")
    tokens, editable = jnp.asarray(tokens), jnp.asarray(editable)
    answer_pos, labels = jnp.asarray(answer_pos), jnp.asarray(labels)
    v = model.embedding.shape[0]
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.shape[0] == 0:
        raise ValueError(
            f"tokens must be non-empty integer ids [B, N], got {tokens.dtype} {tokens.shape}"
        )
    b, n = tokens.shape
    if int(tokens.min()) < 0 or int(tokens.max()) >= v:
        raise ValueError(f"tokens must lie in [0, {v}), the model's vocabulary")
    if editable.shape != (b, n) or editable.dtype != bool:
        raise ValueError(f"editable must be bool [{b}, {n}], got {editable.dtype} {editable.shape}")
    if not bool(jnp.all(jnp.any(editable, axis=1))):
        raise ValueError("every sequence needs at least one editable position")
    if answer_pos.shape != (b,) or not jnp.issubdtype(answer_pos.dtype, jnp.integer):
        raise ValueError(f"answer_pos must be integers [{b}], got {answer_pos.shape}")
    if int(answer_pos.min()) < 0 or int(answer_pos.max()) >= n:
        raise ValueError(f"answer_pos must lie in [0, {n})")
    for name, arr in (("labels", labels), ("targets", targets)):
        if arr is None:
            continue
        arr = jnp.asarray(arr)
        if arr.shape != (b,) or not jnp.issubdtype(arr.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers [{b}], got {arr.shape}")
        if int(arr.min()) < 0 or int(arr.max()) >= v:
            raise ValueError(f"{name} must lie in [0, {v})")
    if targeted:
        if targets is None:
            raise ValueError("a targeted attack needs targets [B]")
        if bool(jnp.any(jnp.asarray(targets) == labels)):
            raise ValueError("targets must differ from the labels")
        targets = jnp.asarray(targets, jnp.int32)
    elif targets is not None:
        raise ValueError("targets given to an untargeted attack (set targeted=True)")
    else:
        targets = labels.astype(jnp.int32)
    return (
        tokens.astype(jnp.int32),
        editable,
        answer_pos.astype(jnp.int32),
        labels.astype(jnp.int32),
        targets,
    )


def _at(logits: Array, pos: Array) -> Array:
    """logits [B, N, V] at per-example positions [B] → [B, V]."""
    return jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def _objective(logits: Array, labels: Array, targets: Array, targeted: bool) -> Array:
    """Per-example loss the attack maximises: CE of the label, or −CE of the target. [B]."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    return -ce(logits, targets) if targeted else ce(logits, labels)


def _success(logits: Array, labels: Array, targets: Array, targeted: bool) -> Array:
    pred = jnp.argmax(logits, -1)
    hit = pred == targets if targeted else pred != labels
    return hit & jnp.all(jnp.isfinite(logits), axis=-1)


def _project(delta: Array, mask: Array, eps, norm: str, scope: str) -> Array:
    delta = delta * mask[..., None]
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    axes = (-1,) if scope == "token" else (-2, -1)
    size = jnp.sqrt(jnp.sum(delta**2, axis=axes, keepdims=True))
    return delta * jnp.minimum(1.0, eps / jnp.maximum(size, 1e-30))


def _direction(grad: Array, mask: Array, norm: str, scope: str) -> Array:
    grad = grad * mask[..., None]
    if norm == "linf":
        return jnp.sign(grad)
    axes = (-1,) if scope == "token" else (-2, -1)
    return grad / jnp.maximum(jnp.sqrt(jnp.sum(grad**2, axis=axes, keepdims=True)), 1e-30)


@functools.partial(jax.jit, static_argnames=("config",))
def _pgd(model, h0, mask, pos, labels, targets, keys, eps, config: EmbeddingPGDConfig):
    # ε is traced (``config.eps`` is zeroed): one compilation serves every budget
    t = config.targeted
    alpha = config.step_size * eps / config.steps

    def value_and_grad(delta):
        def total(d):
            logits = _at(model.forward(h0 + d), pos)
            return jnp.sum(_objective(logits, labels, targets, t)), logits

        (_, logits), g = jax.value_and_grad(total, has_aux=True)(delta)
        return logits, g

    if config.random_start:
        noise = jax.vmap(lambda k: jax.random.uniform(k, h0.shape[1:], h0.dtype, -1, 1))(keys)
        start = (
            eps * noise
            if config.norm == "linf"
            else 0.5 * eps * _direction(noise, mask, "l2", config.scope)
        )
        delta = _project(start, mask, eps, config.norm, config.scope)
    else:
        delta = jnp.zeros_like(h0)
    b = h0.shape[0]

    def body(i, carry):
        delta, best, done, calls = carry
        logits, g = value_and_grad(delta)
        hit = _success(logits, labels, targets, t) & ~done
        best = jnp.where(hit[:, None, None], delta, best)
        calls = jnp.where(done, calls, calls + 1)
        done = done | hit
        step = delta + alpha * _direction(g, mask, config.norm, config.scope)
        return _project(step, mask, eps, config.norm, config.scope), best, done, calls

    init = (delta, delta, jnp.zeros(b, bool), jnp.zeros(b, jnp.int32))
    delta, best, done, calls = jax.lax.fori_loop(0, config.steps, body, init)
    logits = _at(model.forward(h0 + delta), pos)  # the last iterate, checked once more
    hit = _success(logits, labels, targets, t) & ~done
    best = jnp.where((done | hit)[:, None, None], jnp.where(hit[:, None, None], delta, best), delta)
    return best, done | hit, jnp.where(done, calls, calls + 1)


@jax.jit
def _rescore(model: TextModel, tokens: Array, delta: Array, pos: Array) -> Array:
    """The independent re-check: one fresh forward of E[tokens] + δ, answer-position logits."""
    return _at(model.forward(model.embedding[tokens] + delta), pos)


def _result(model, clean_tokens, tokens, delta, pos, labels, targets, targeted, claimed, calls):
    clean_logits = _rescore(model, clean_tokens, jnp.zeros_like(delta), pos)
    check_finite_logits(clean_logits, "the clean sequences")
    logits = _rescore(model, tokens, delta, pos)
    change = model.embedding[tokens] - model.embedding[clean_tokens] + delta
    flat = change.reshape(change.shape[0], -1)
    return TextAttackResult(
        tokens=tokens,
        delta=delta,
        success=_success(logits, labels, targets, targeted),
        claimed=claimed,
        logits=logits,
        clean_logits=clean_logits,
        linf=jnp.max(jnp.abs(flat), axis=1),
        l2=jnp.sqrt(jnp.sum(flat**2, axis=1)),
        l2_token=jnp.max(jnp.sqrt(jnp.sum(change**2, axis=-1)), axis=1),
        changed=jnp.sum(tokens != clean_tokens, axis=1).astype(jnp.int32),
        model_calls=calls.astype(jnp.int32),
    )


def _keys(key, b: int, ids) -> Array:
    key = check_key(key)
    ids = jnp.arange(b) if ids is None else jnp.asarray(ids)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def embedding_pgd(model: TextModel, tokens, editable, answer_pos, labels, key,
                  config: EmbeddingPGDConfig, *, targets=None,
                  ids=None) -> TextAttackResult:  # fmt: skip
    """PGD on the editable input embeddings (module docstring); example e draws its random
    start from ``fold_in(key, ids[e])``. Returns the re-checked :class:`TextAttackResult`."""
    tokens, editable, pos, labels, targets = _check(
        model, tokens, editable, answer_pos, labels, targets, config.targeted
    )
    h0 = model.embedding[tokens]
    keys = _keys(key, tokens.shape[0], ids)
    mask = editable.astype(h0.dtype)
    eps = jnp.asarray(config.eps, h0.dtype)
    delta, claimed, calls = _pgd(model, h0, mask, pos, labels, targets, keys, eps,
                                 dataclasses.replace(config, eps=0.0))  # fmt: skip
    return _result(model, tokens, tokens, delta, pos, labels, targets, config.targeted,
                   claimed, calls)  # fmt: skip


def _substitution_scores(model, tokens, pos, labels, targets, targeted, editable):
    """First-order gain of every substitution, (E[v] − E[t_i])·∂L/∂h_i: [B, N, V], −inf where
    not allowed (fixed positions, the current token); and the current loss and logits."""
    h0 = model.embedding[tokens]

    def total(h):
        logits = _at(model.forward(h), pos)
        loss = _objective(logits, labels, targets, targeted)
        return jnp.sum(loss), (loss, logits)

    (_, (loss, logits)), g = jax.value_and_grad(total, has_aux=True)(h0)
    scores = jnp.einsum("bnd,vd->bnv", g, model.embedding) - jnp.sum(g * h0, -1, keepdims=True)
    current = jax.nn.one_hot(tokens, model.embedding.shape[0], dtype=bool)
    allowed = editable[..., None] & ~current
    return jnp.where(allowed, scores, -jnp.inf), loss, logits


def _evaluate(model, tokens, cand_pos, cand_tok, pos, labels, targets, targeted):
    """Exact losses of single swaps: tokens [B, N], candidates [B, C] → (swapped [B, C, N],
    loss [B, C], success [B, C]); swaps with cand_tok < 0 are invalid (loss −inf)."""
    b, c = cand_pos.shape
    swapped = jnp.where(
        jnp.arange(tokens.shape[1])[None, None] == cand_pos[..., None],
        jnp.maximum(cand_tok, 0)[..., None], tokens[:, None],
    )  # fmt: skip
    flat = swapped.reshape(b * c, -1)
    logits = _at(model.logits(flat), jnp.repeat(pos, c))
    rep = lambda a: jnp.repeat(a, c)  # noqa: E731
    loss = _objective(logits, rep(labels), rep(targets), targeted).reshape(b, c)
    hit = _success(logits, rep(labels), rep(targets), targeted).reshape(b, c)
    valid = cand_tok >= 0
    return swapped, jnp.where(valid, loss, -jnp.inf), hit & valid


def _choose(loss: Array, hit: Array) -> Array:
    """Index [B] of the candidate to take: the highest-loss one that succeeds if any does
    (the loss ranks candidates, but the highest loss need not be a flip), else the highest."""
    return jnp.argmax(
        jnp.where(jnp.any(hit, 1, keepdims=True), jnp.where(hit, loss, -jnp.inf), loss), 1
    )


@functools.partial(jax.jit, static_argnames=("config",))
def _hotflip(model, tokens, editable, pos, labels, targets, config: HotFlipConfig):
    t, v = config.targeted, model.embedding.shape[0]
    c = min(config.candidates, tokens.shape[1] * (v - 1))
    b = tokens.shape[0]

    def body(i, carry):
        cur, done, calls = carry
        scores, loss, logits = _substitution_scores(model, cur, pos, labels, targets, t, editable)
        done = done | _success(logits, labels, targets, t)
        top, idx = jax.lax.top_k(scores.reshape(b, -1), c)
        cand_pos, cand_tok = idx // v, jnp.where(jnp.isfinite(top), idx % v, -1)
        swapped, cand_loss, hit = _evaluate(model, cur, cand_pos, cand_tok, pos, labels, targets, t)
        best = _choose(cand_loss, hit)
        better = ((jnp.take_along_axis(cand_loss, best[:, None], 1)[:, 0] > loss)
                  | hit[jnp.arange(b), best]) & ~done  # fmt: skip
        nxt = jnp.where(better[:, None], swapped[jnp.arange(b), best], cur)
        calls = jnp.where(done, calls, calls + 1 + c)
        done = done | (better & hit[jnp.arange(b), best])
        return nxt, done, calls

    init = (tokens, jnp.zeros(b, bool), jnp.zeros(b, jnp.int32))
    return jax.lax.fori_loop(0, config.budget, body, init)


def hotflip(model: TextModel, tokens, editable, answer_pos, labels, key, config: HotFlipConfig,
            *, targets=None, ids=None) -> TextAttackResult:  # fmt: skip
    """HotFlip with a budget of substituted tokens (module docstring; deterministic, ``key``
    and ``ids`` are accepted for the common signature). Re-checked :class:`TextAttackResult`."""
    tokens, editable, pos, labels, targets = _check(
        model, tokens, editable, answer_pos, labels, targets, config.targeted
    )
    check_key(key)
    adv, claimed, calls = _hotflip(model, tokens, editable, pos, labels, targets, config)
    return _result(model, tokens, adv, jnp.zeros_like(model.embedding[tokens]), pos, labels,
                   targets, config.targeted, claimed, calls)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("config",))
def _gcg(model, tokens, editable, pos, labels, targets, keys, config: GCGConfig):
    t, (b, n), v = config.targeted, tokens.shape, model.embedding.shape[0]
    k = min(config.top_k, v - 1)
    pool = n * k
    width = min(config.search_width, pool)

    def body(i, carry):
        cur, best, best_loss, done, calls = carry
        scores, loss, logits = _substitution_scores(model, cur, pos, labels, targets, t, editable)
        hit_now = _success(logits, labels, targets, t)
        improved = (loss > best_loss) & ~done
        best = jnp.where(improved[:, None], cur, best)
        best_loss = jnp.where(improved, loss, best_loss)
        done = done | hit_now
        top, tok = jax.lax.top_k(scores, k)  # [B, N, k]
        valid = jnp.isfinite(top).reshape(b, pool)
        if width < pool:  # sample distinct swaps among the valid ones (random priorities)
            prio = jax.vmap(lambda kk: jax.random.uniform(jax.random.fold_in(kk, i), (pool,)))(keys)
            _, pick = jax.lax.top_k(jnp.where(valid, prio, -1.0), width)
        else:
            pick = jnp.broadcast_to(jnp.arange(pool), (b, pool))
        cand_pos = pick // k
        cand_tok = jnp.take_along_axis(tok.reshape(b, pool), pick, 1)
        cand_tok = jnp.where(jnp.take_along_axis(valid, pick, 1), cand_tok, -1)
        swapped, cand_loss, hit = _evaluate(model, cur, cand_pos, cand_tok, pos, labels, targets, t)
        j = _choose(cand_loss, hit)
        nxt = jnp.where(done[:, None], cur, swapped[jnp.arange(b), j])
        calls = jnp.where(done, calls, calls + 1 + width)
        return nxt, best, best_loss, done, calls

    init = (tokens, tokens, jnp.full((b,), -jnp.inf), jnp.zeros(b, bool), jnp.zeros(b, jnp.int32))
    cur, best, best_loss, done, calls = jax.lax.fori_loop(0, config.steps, body, init)
    logits = _at(model.logits(cur), pos)  # the last move, scored once more
    loss, hit = _objective(logits, labels, targets, t), _success(logits, labels, targets, t)
    # a success is frozen in ``cur``; otherwise the better of the last move and the best seen
    keep = done | hit | (loss > best_loss)
    best = jnp.where(keep[:, None], cur, best)
    return best, done | hit, jnp.where(done, calls, calls + 1)


def gcg(model: TextModel, tokens, editable, answer_pos, labels, key, config: GCGConfig, *,
        targets=None, ids=None) -> TextAttackResult:  # fmt: skip
    """Greedy coordinate gradient (module docstring); example e samples its swaps from
    ``fold_in(key, ids[e])``. Re-checked :class:`TextAttackResult`."""
    tokens, editable, pos, labels, targets = _check(
        model, tokens, editable, answer_pos, labels, targets, config.targeted
    )
    keys = _keys(key, tokens.shape[0], ids)
    adv, claimed, calls = _gcg(model, tokens, editable, pos, labels, targets, keys, config)
    return _result(model, tokens, adv, jnp.zeros_like(model.embedding[tokens]), pos, labels,
                   targets, config.targeted, claimed, calls)  # fmt: skip


def summarize_text(result: TextAttackResult, labels, targets=None) -> Summary:
    """The image attacks' :func:`~diffjax.attacks.accounting.summarize` of a text attack:
    clean accuracy, ASR over the initially correct sequences, robust accuracy, Wilson intervals,
    norms of the embedding change (sequence ℓ∞ and ℓ2) over the fooled ones, model calls."""
    clean_logits, logits = np.asarray(result.clean_logits), np.asarray(result.logits)
    valid = np.isfinite(clean_logits).all(1) & np.isfinite(logits).all(1)
    return summarize(
        np.asarray(labels), clean_logits.argmax(1), logits.argmax(1), np.asarray(result.linf),
        np.asarray(result.l2), np.asarray(result.model_calls),
        None if targets is None else np.asarray(targets), valid=valid,
    )  # fmt: skip
