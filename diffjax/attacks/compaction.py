"""Attacks as plans of segments, run either as one vmapped program or compacted between segments.

    plan = Plan((Stage(APGDPhase, APGDConfig(8 / 255, loss="dlr-targeted")),))
    result = run_plan(plan, model_fn, images, labels, key)                 # compacted (default)
    result = run_plan(plan, model_fn, images, labels, key, compact=False)  # one vmapped jit

An attack is a sequence of *stages* (AutoAttack: APGD-CE, APGD-T, FAB-T, Square; any other
attack: one stage), and each stage a sequence of *segments* — its restarts, its targets, or (Square)
chunks of queries — that an example stops taking once it is done (fooled). A :class:`Phase`
describes one stage per example: ``init`` its state (carry), run ``segment`` s on it, tell when it
is ``done``, and give its ``output``.

**Uncompacted**, every example runs under ``vmap`` in a ``lax.while_loop`` over its segments; the
vmapped loop keeps running the whole batch while any example is not done (the done ones are
masked). **Compacted**, a host loop runs one jitted segment at a time on only the examples not yet
done, gathered into a smaller batch whose size is rounded up to a *bucket* (a power of two, at
least ``min_bucket``, a multiple of the device count, at most the batch): the padding repeats a
real example and its results are dropped, so at most ⌈log₂ B⌉ + 1 sizes are compiled per segment
function. Because example e's randomness is ``fold_in(key, ids[e])`` and segments are the same
per-example computation, both give the same per-example results; the model's batched matmuls then
see other batch sizes, which on some backends changes float rounding in the last bit.

Several budgets (``eps`` [B], one radius per example) go through the same code: the stage configs
take the radius as a traced value, so one compilation serves every ε.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax.attacks import interface as itf

Array = jax.Array

CLEAN_SALT = 1 << 20  # a randomised model's clean logits use fold_in(example key, CLEAN_SALT)
MIN_BUCKET = 8


class Example(NamedTuple):
    """One example as a stage sees it (under ``vmap``: one entry per example).

    Attributes:
      x0: [H, W, C] clean image; label, target: int32 scalars (target = label if untargeted);
      key: the stage's PRNG key; clean: [K] clean logits.
    """

    x0: Array
    label: Array
    target: Array
    key: Array
    clean: Array


class Phase(Protocol):
    """One stage of an attack on ONE example (static methods; the class is a static jit arg)."""

    @staticmethod
    def segments(cfg) -> int:
        """How many segments (restarts, targets, query chunks) the stage has at most."""

    @staticmethod
    def init(model: itf.ExampleModel, ex: Example, cfg) -> Any:
        """The carry before segment 0 (a pytree of arrays, no model call)."""

    @staticmethod
    def segment(model: itf.ExampleModel, ex: Example, cfg, carry, seg: Array) -> Any:
        """The carry after segment ``seg`` (int32 scalar)."""

    @staticmethod
    def done(ex: Example, cfg, carry) -> Array:
        """bool scalar: no further segment runs for this example."""

    @staticmethod
    def output(ex: Example, cfg, carry) -> tuple[Array, Array, Array]:
        """(adversarial image [H, W, C], its logits [K], model calls of the stage)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """A phase with its config; the stage key is fold_in(example key, salt) (None: the example
    key itself)."""

    phase: type
    config: Any
    salt: int | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """An attack as stages.

    Attributes:
      stages: run in order.
      first_success: AutoAttack's rule: a stage runs only on examples no earlier stage fooled,
        each example keeps the first successful adversarial, and ``extras["stage"]`` records
        which stage it was (−1: none). Otherwise (one stage) its output is the result.
      targeted: success means prediction = target (else ≠ label).
      randomized: the model takes (images, keys) and draws its randomness from the keys.
      min_classes: classes the stages need.
    """

    stages: tuple[Stage, ...]
    first_success: bool = False
    targeted: bool = False
    randomized: bool = False
    min_classes: int = 2

    def __post_init__(self):
        if not self.stages:
            raise ValueError("a plan needs at least one stage")
        if len(self.stages) > 1 and not self.first_success:
            raise ValueError("several stages need first_success=True")


def with_eps(cfg, eps):
    """``cfg`` with radius ``eps`` (a traced per-example scalar), or ``cfg`` if eps is None."""
    return cfg if eps is None else dataclasses.replace(cfg, eps=eps)


def stage_key(key: Array, salt: int | None) -> Array:
    return key if salt is None else jax.random.fold_in(key, salt)


def clean_logits(model: itf.ExampleModel, x0: Array, key: Array) -> Array:
    if model.randomized:
        return model(x0, key=jax.random.fold_in(key, CLEAN_SALT))
    return model(x0)


def run_phase(phase, model, ex: Example, cfg, active) -> tuple[Array, Array, Array]:
    """A whole stage on one example: its segments in a while loop while not done and ``active``."""
    n = phase.segments(cfg)

    def more(c):
        seg, carry = c
        return active & (seg < n) & ~phase.done(ex, cfg, carry)

    def body(c):
        seg, carry = c
        return seg + 1, phase.segment(model, ex, cfg, carry, seg)

    _, carry = lax.while_loop(more, body, (jnp.int32(0), phase.init(model, ex, cfg)))
    return phase.output(ex, cfg, carry)


def plan_single(model, x0, label, target, key, eps, plan: Plan):
    """The whole plan on one example (the uncompacted path).

    Returns:
      (adv [H, W, C], adv logits [K], clean logits [K], model calls, extras).
    """
    clean = clean_logits(model, x0, key)
    success = itf.succeeded(clean, label, target, plan.targeted)
    adv, logits, calls, stage = x0, clean, jnp.int32(1), jnp.int32(-1)
    for s, st in enumerate(plan.stages):
        ex = Example(x0, label, target, stage_key(key, st.salt), clean)
        active = ~success if plan.first_success else True
        adv_s, logits_s, calls_s = run_phase(st.phase, model, ex, with_eps(st.config, eps), active)
        if plan.first_success:
            new = ~success & itf.succeeded(logits_s, label, target, plan.targeted)
            adv = jnp.where(new, adv_s, adv)
            logits = jnp.where(new, logits_s, logits)
            stage = jnp.where(new, s, stage)
            success = success | new
        else:
            adv, logits = adv_s, logits_s
        calls = calls + calls_s
    return adv, logits, clean, calls, ({"stage": stage} if plan.first_success else {})


# ---------------------------------------------------------------------------------------------
# Entry point: validation, then either path.


def run_plan(
    plan: Plan,
    model_fn,
    images,
    labels,
    key,
    *,
    targets=None,
    ids=None,
    eps=None,
    compact: bool = True,
    min_bucket: int = MIN_BUCKET,
) -> itf.AttackResult:
    """Validate the inputs and run ``plan`` on every example.

    Args:
      plan: the attack.
      model_fn: images [B, H, W, C] in [0, 1] → logits [B, K] (randomised plans:
        ``model_fn(images, keys [B])``).
      images: [B, H, W, C] floating, in [0, 1]; labels: [B] integers.
      key: one PRNG key; example e uses ``fold_in(key, ids[e])``.
      targets: [B] target classes, required iff ``plan.targeted``.
      ids: [B] non-negative example identifiers (default ``arange(B)``).
      eps: [B] per-example radius overriding the stage configs' ``eps`` (None: the configs').
      compact: run the segments on the still-active examples only (see the module docstring).
        Inside an outer trace (jit, vmap) the uncompacted path is used.
      min_bucket: smallest compacted batch.

    Returns:
      :class:`~diffjax.attacks.interface.AttackResult`.
    """
    images, labels, targets, ids = itf.check_inputs(
        model_fn,
        images,
        labels,
        targets,
        ids,
        targeted=plan.targeted,
        min_classes=plan.min_classes,
        randomized=plan.randomized,
    )
    if eps is not None:
        eps = jnp.asarray(eps, jnp.float32)
        if eps.shape != (images.shape[0],):
            raise ValueError(
                f"eps must be one radius per example [{images.shape[0]}], got {eps.shape}"
            )
        if not isinstance(eps, jax.core.Tracer) and not bool(
            jnp.all((eps >= 0) & jnp.isfinite(eps))
        ):
            raise ValueError("eps must be finite and >= 0")
    itf.check_int("min_bucket", min_bucket, 1)
    model_fn, key = itf.as_partial(model_fn), itf.check_key(key)
    # The radius always travels as a traced per-example value and the static configs carry a
    # placeholder: one compilation serves every ε, and a radius gives the same float32 numbers
    # whether it came from the config or from ``eps``.
    radii = {st.config.eps for st in plan.stages}
    if eps is None:
        if len(radii) != 1:
            raise ValueError(f"the stages have different radii {sorted(radii)}; pass eps")
        eps = jnp.full(images.shape[0], radii.pop(), jnp.float32)
    if itf._is_concrete(eps):  # the ℓ2 bound needs the image size, known only here
        itf.check_eps(float(jnp.max(eps)), getattr(plan.stages[0].config, "norm", None),
                      math.prod(images.shape[1:]))  # fmt: skip
    plan = dataclasses.replace(
        plan,
        stages=tuple(
            dataclasses.replace(st, config=with_eps(st.config, 0.0)) for st in plan.stages
        ),
    )
    traced = any(isinstance(a, jax.core.Tracer) for a in (images, labels, targets, ids, eps, key))
    if not compact or traced:
        result = _run_plan(plan, model_fn, images, labels, targets, key, ids, eps)
    else:
        result = _run_compacted(plan, model_fn, images, labels, targets, key, ids, eps,
                                min_bucket)  # fmt: skip
    if itf._is_concrete(result.clean_logits):  # under a caller's jit there is no value
        itf.check_finite_logits(result.clean_logits, "the clean images")
    return result


@functools.partial(jax.jit, static_argnums=0)
def _run_plan(plan, model_fn, images, labels, targets, key, ids, eps) -> itf.AttackResult:
    model = itf.ExampleModel(model_fn, plan.randomized)

    def one(x0, label, target, example_id, e):
        k = jax.random.fold_in(key, example_id)
        return plan_single(model, x0, label, target, k, e, plan)

    eps_axis = None if eps is None else 0
    adv, logits, clean, calls, extras = jax.vmap(one, in_axes=(0, 0, 0, 0, eps_axis))(
        images, labels, targets, ids, eps
    )
    return _result(plan, model_fn, images, labels, targets, adv, logits, clean, calls, extras)


def _result(plan, model_fn, images, labels, targets, adv, logits, clean, calls, extras):
    """The AttackResult. A deterministic model's logits at the returned images come from one
    batched forward of the whole batch (not counted as a model call), so that they do not depend
    on the batch sizes the attack ran at; a randomised model's are the attack's own draw."""
    targeted = plan.targeted
    if not plan.randomized:
        logits = model_fn(adv).astype(jnp.float32)
    return itf.make_result(images, labels, targets, targeted, adv, logits, clean, calls, extras)


_finish = jax.jit(_result, static_argnums=0)


# ---------------------------------------------------------------------------------------------
# The compacted path: one jitted function per (phase, config, bucket size).


def bucket_size(n: int, full: int, multiple: int = 1, floor: int = MIN_BUCKET) -> int:
    """The compacted batch for ``n`` active examples out of ``full``: the next power of two ≥ n
    (and ≥ ``floor``), rounded up to a multiple of ``multiple`` (the devices), at most ``full``."""
    if not 0 < n <= full:
        raise ValueError(f"need 0 < n <= full, got n={n}, full={full}")
    size = max(1 << (n - 1).bit_length(), floor)
    size = -(-size // multiple) * multiple
    return full if size >= full else size


def _examples(stage: Stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps):
    """(model, per-example function wrapper) shared by the three jitted stage functions."""
    model = itf.ExampleModel(model_fn, randomized)

    def wrap(fn):
        def one(x0, label, target, example_id, clean, e, *rest):
            k = stage_key(jax.random.fold_in(key, example_id), stage.salt)
            ex = Example(x0, label, target, k, clean)
            return fn(model, ex, with_eps(stage.config, e), *rest)

        eps_axis = None if eps is None else 0
        return lambda *rest, axes=(): jax.vmap(one, in_axes=(0, 0, 0, 0, 0, eps_axis, *axes))(
            x0, labels, targets, ids, clean, eps, *rest
        )

    return wrap


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stage_init(stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps):
    wrap = _examples(stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps)

    def init(model, ex, cfg):
        carry = stage.phase.init(model, ex, cfg)
        return carry, stage.phase.done(ex, cfg, carry)

    return wrap(init)()


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stage_segment(stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps, carry,
                   seg):  # fmt: skip
    wrap = _examples(stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps)

    def segment(model, ex, cfg, carry):
        carry = stage.phase.segment(model, ex, cfg, carry, seg)
        return carry, stage.phase.done(ex, cfg, carry)

    return wrap(segment)(carry, axes=(0,))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stage_output(stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps, carry):
    wrap = _examples(stage, randomized, model_fn, key, x0, labels, targets, ids, clean, eps)
    return wrap(lambda model, ex, cfg, carry: stage.phase.output(ex, cfg, carry))(carry, axes=(0,))


@functools.partial(jax.jit, static_argnums=0)
def _clean(randomized, model_fn, key, images, ids):
    model = itf.ExampleModel(model_fn, randomized)
    return jax.vmap(lambda x, i: clean_logits(model, x, jax.random.fold_in(key, i)))(images, ids)


def _row_sharding(images) -> NamedSharding | None:
    """Rows sharded over a 1-D mesh, if the caller sharded the batch that way."""
    sharding = getattr(images, "sharding", None)
    if isinstance(sharding, NamedSharding) and len(sharding.device_set) > 1:
        mesh = sharding.mesh
        if len(mesh.axis_names) == 1:
            return NamedSharding(mesh, P(mesh.axis_names[0]))
    return None


def _run_compacted(plan, model_fn, images, labels, targets, key, ids, eps, min_bucket):
    rows = _row_sharding(images)
    multiple = len(rows.device_set) if rows is not None else 1
    full = images.shape[0]
    if rows is not None and full % multiple:
        rows, multiple = None, 1  # an uneven batch cannot be row-sharded; run it unsharded

    def put(tree):
        return jax.tree.map(lambda a: jax.device_put(a, rows) if rows is not None else a, tree)

    host = _to_host((images, labels, targets, ids, eps))
    x_np, y_np, t_np, id_np, eps_np = (np.asarray(a) if a is not None else None for a in host)
    clean = np.asarray(_to_host(_clean(plan.randomized, model_fn, key, images, ids)))
    adv, logits = x_np.copy(), clean.copy()
    calls = np.ones(full, np.int32)
    stage_of = np.full(full, -1, np.int32)
    success = _succeeded(clean, y_np, t_np, plan.targeted)

    def size_for(n: int) -> int:
        return bucket_size(n, full, multiple, min_bucket) if n < full else full

    def gather(index, size, *trees):
        """Rows ``index`` of each tree, padded to ``size`` by repeating the first, on device."""
        return put(tuple(_rows(t, _padded(index, size)) for t in trees))

    inputs = (x_np, y_np, t_np, id_np, clean, eps_np)
    for s, st in enumerate(plan.stages):
        members = np.flatnonzero(~success) if plan.first_success else np.arange(full)
        m = len(members)
        if m == 0:
            continue
        args = (st, plan.randomized, model_fn, key)
        carry, done = _to_host(_stage_init(*args, *gather(members, size_for(m), *inputs)))
        carry, done = _rows(carry, np.arange(m)), np.array(done[:m])
        for seg in range(st.phase.segments(st.config)):
            live = np.flatnonzero(~done)  # positions in ``members`` still not done
            if len(live) == 0:
                break
            size = size_for(len(live))
            batch = gather(members[live], size, *inputs)
            part = put(_rows(carry, _padded(live, size)))
            new, new_done = _to_host(_stage_segment(*args, *batch, part, jnp.int32(seg)))
            _scatter(carry, live, _rows(new, np.arange(len(live))))
            done[live] = new_done[: len(live)]
        size = size_for(m)
        part = put(_rows(carry, _padded(np.arange(m), size)))
        outputs = _to_host(_stage_output(*args, *gather(members, size, *inputs), part))
        adv_s, logits_s, calls_s = _rows(outputs, np.arange(m))
        if plan.first_success:
            new = _succeeded(logits_s, y_np[members], t_np[members], plan.targeted)
            fooled = members[new]
            adv[fooled], logits[fooled], stage_of[fooled] = adv_s[new], logits_s[new], s
            success[fooled] = True
        else:
            adv[members], logits[members] = adv_s, logits_s
        calls[members] += calls_s
    extras = {"stage": stage_of} if plan.first_success else {}
    out = put((images, labels, targets, adv, logits, clean, calls, extras))
    return _finish(plan, model_fn, *out)


def _to_host(tree):
    """Every array of ``tree`` whole on this host, also where it spans several processes.

    Each process then holds the same values and makes the same compaction choices; the next
    ``device_put`` onto the global sharding takes that identical data on every process.
    """

    def fetch(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(jax.device_get(a))

    return jax.tree.map(fetch, tree)


def _padded(index: np.ndarray, size: int) -> np.ndarray:
    """``index`` padded to ``size`` entries by repeating its first (a real example)."""
    return np.concatenate([index, np.full(size - len(index), index[0], index.dtype)])


def _rows(tree, index: np.ndarray):
    """Rows ``index`` of every array of a host pytree (None stays None), as writable copies."""
    if tree is None:
        return None
    return jax.tree.map(lambda a: np.array(np.asarray(a)[index]), tree)


def _scatter(tree, index: np.ndarray, values) -> None:
    """tree[index] = values, leaf by leaf, in place."""
    for a, v in zip(jax.tree.leaves(tree), jax.tree.leaves(values), strict=True):
        a[index] = v


def _succeeded(logits: np.ndarray, labels: np.ndarray, targets: np.ndarray, targeted: bool):
    pred = np.argmax(logits, axis=-1)
    return pred == targets if targeted else pred != labels
