"""The one interface every attack shares: model function, inputs, per-example results.

    model_fn = model_function(vit)     # logits [B, K] from images [B, H, W, C] in [0, 1]
    result = pgd(model_fn, images, labels, key, PGDConfig(eps=4 / 255))
    result.success, result.adv_images, result.l2   # one entry per example

Each attack is written for ONE example and ``vmap``ped over the batch inside one ``jax.jit``
(the model itself is still called once per batch, see :class:`ExampleModel`); example e draws
its randomness from ``fold_in(key, ids[e])``, so its result does not depend on which other
examples share its batch, their order, or how the batch is sharded over devices. Inputs are
checked on the host before the jit (shapes, dtypes, [0, 1] range, NaN, label range), so bad
input raises a ValueError instead of producing a wrong number. Logits are checked too: NaN or
infinite clean logits raise a ValueError after the attack (the argmax of NaN is class 0, which
would count label-0 examples as correct), and an example whose adversarial logits are not
finite is never a success; :func:`~diffjax.attacks.summarize_result` counts it as invalid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from diffjax.attack_config import (  # noqa: F401 (the attacks validate with itf.check_*)
    check_bool,
    check_eps,
    check_fraction,
    check_int,
    check_nonnegative,
    check_norm,
    check_positive,
)

Array = jax.Array
ModelFn = Callable[[Array], Array]


@flax.struct.dataclass
class AttackResult:
    """Per-example outcome of an attack on a batch of B examples.

    Attributes:
      adv_images: [B, H, W, C] float32 in [0, 1]; the clean image where the attack found nothing
        better (never a zero image).
      success: [B] bool; argmax(logits) ≠ label (untargeted) or = target (targeted), computed from
        ``logits``, i.e. from the returned image; False where ``logits`` are not all finite.
      logits: [B, K] float32, the model's logits at ``adv_images`` (for deterministic models
        from one batched forward of the whole batch after the attack).
      clean_logits: [B, K] float32 at the clean images.
      linf, l2: [B] float32, ‖adv_images − images‖∞ and ‖·‖₂ (pixel units, [0, 1] scale).
      model_calls: [B] int32, model evaluations spent on the example (a forward with its
        backward counts as one) until the attack stopped working on it.
      extras: per-example attack-specific arrays (e.g. CW's final constant ``const``,
        AutoAttack's ``stage``).
    """

    adv_images: Array
    success: Array
    logits: Array
    clean_logits: Array
    linf: Array
    l2: Array
    model_calls: Array
    extras: Mapping[str, Array] = flax.struct.field(default_factory=dict)


def model_function(model: nnx.Module) -> jax.tree_util.Partial:
    """An NNX classifier as a model function whose state (parameters, BatchNorm's statistics)
    is pytree leaves, not constants baked into the compiled attack (inside a caller's jit, such
    as adversarial training's step, they are that trace's values); in evaluation mode (no
    dropout)."""
    graphdef, state = nnx.split(model)

    def apply(state, images):
        return nnx.merge(graphdef, state)(images)

    return jax.tree_util.Partial(apply, state)


def succeeded(logits: Array, label: Array, target: Array, targeted: bool) -> Array:
    """The success criterion on one example's logits [K]: prediction ≠ label, or = target."""
    pred = jnp.argmax(logits, axis=-1)
    return pred == target if targeted else pred != label


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Input validation and the per-example driver.


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_key(key) -> Array:
    """A single PRNG key (new-style ``jax.random.key`` or legacy uint32[2])."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    if key.dtype != jnp.uint32 or key.shape != (2,):
        raise ValueError(
            f"key must be jax.random.key(seed) or jax.random.PRNGKey(seed), got {key.dtype} "
            f"{key.shape}"
        )
    return jax.random.wrap_key_data(key)


def check_inputs(
    model_fn: ModelFn,
    images,
    labels,
    targets=None,
    ids=None,
    *,
    targeted: bool = False,
    min_classes: int = 2,
    randomized: bool = False,
) -> tuple[Array, Array, Array, Array]:
    """Validate a batch and return (images float32, labels int32, targets int32, ids int32).

    Raises:
      ValueError: wrong shapes or dtypes, empty batch, images outside [0, 1] or not finite, labels
        or targets outside [0, K), targets missing (targeted) or equal to the labels, model
        output not [B, K], fewer than ``min_classes`` classes.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must be floating point in [0, 1], got {images.dtype} (divide uint8 by 255)"
        )
    b = images.shape[0]
    if b == 0:
        raise ValueError("empty batch")
    images = images.astype(jnp.float32)
    if _is_concrete(images):
        if not bool(jnp.all(jnp.isfinite(images))):
            raise ValueError("images contain NaN or inf")
        lo, hi = float(jnp.min(images)), float(jnp.max(images))
        if lo < 0 or hi > 1:
            raise ValueError(f"images must lie in [0, 1], got values in [{lo}, {hi}]")

    spec = jax.ShapeDtypeStruct(images.shape, jnp.float32)
    if randomized:
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), b))
        try:
            out = jax.eval_shape(model_fn, spec, keys)
        except TypeError as e:
            raise ValueError(
                "a randomised attack (EOT) needs model_fn(images [B, H, W, C], keys [B]) -> "
                f"logits [B, K]: {e}"
            ) from e
    else:
        out = jax.eval_shape(model_fn, spec)
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != b:
        raise ValueError(f"model_fn must return logits [B={b}, K], got {out}")
    k = int(out.shape[1])
    if k < min_classes:
        raise ValueError(f"this attack needs at least {min_classes} classes, the model has {k}")

    def check_class_array(name, arr):
        arr = jnp.asarray(arr)
        if arr.shape != (b,) or not jnp.issubdtype(arr.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers of shape [{b}], got {arr.dtype} {arr.shape}")
        if _is_concrete(arr) and (int(jnp.min(arr)) < 0 or int(jnp.max(arr)) >= k):
            raise ValueError(f"{name} must lie in [0, {k}), the model's classes")
        return arr.astype(jnp.int32)

    labels = check_class_array("labels", labels)
    if targeted:
        if targets is None:
            raise ValueError("a targeted attack needs targets [B]")
        targets = check_class_array("targets", targets)
        if _is_concrete(targets) and bool(jnp.any(targets == labels)):
            raise ValueError("targets must differ from the labels")
    elif targets is not None:
        raise ValueError("targets given to an untargeted attack (set targeted=True)")
    else:
        targets = labels
    if ids is None:
        ids = jnp.arange(b, dtype=jnp.int32)
    else:
        ids = jnp.asarray(ids)
        if ids.shape != (b,) or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ids must be integers of shape [{b}], got {ids.dtype} {ids.shape}")
        if _is_concrete(ids) and int(jnp.min(ids)) < 0:
            raise ValueError("ids must be >= 0")
        ids = ids.astype(jnp.int32)
    return images, labels, targets, ids


def as_partial(model_fn: ModelFn) -> jax.tree_util.Partial:
    """Model functions travel through ``jit`` as pytrees: a Partial keeps its bound arrays as
    arguments; any other callable becomes a leafless Partial (cached by identity)."""
    if isinstance(model_fn, jax.tree_util.Partial):
        return model_fn
    if not callable(model_fn):
        raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}")
    return jax.tree_util.Partial(model_fn)


def _broadcast(axis_size: int, batched, args) -> list:
    return [
        a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a)))
        for a, b in zip(args, batched, strict=True)
    ]


class ExampleModel:
    """One example's view of a batched model function, for attacks written per example.

    ``model(x)`` gives the logits [K] of one image [H, W, C]; ``model.value_and_grad(loss_fn, x,
    *aux)`` gives (loss, logits [K], ∂loss/∂x) for ``loss_fn(logits [K], *aux) -> scalar``.
    Under ``vmap`` both call ``model_fn`` ONCE on the whole batch (``custom_vmap`` rules), instead
    of vmapping the model's own operations, which is measurably slower. Everything that varies
    per example must therefore reach ``loss_fn`` through ``aux``, never through a closure; the
    model's parameters (the Partial's leaves) are passed as explicit, unbatched arguments.
    """

    def __init__(self, model_fn: jax.tree_util.Partial, randomized: bool = False):
        self._params, self._treedef = jax.tree.flatten(model_fn)
        self.randomized = randomized

    def _logits(self, params, x: Array, key_data: Array | None = None) -> Array:
        fn = jax.tree.unflatten(self._treedef, params)
        if key_data is None:
            return fn(x).astype(jnp.float32)
        return fn(x, jax.random.wrap_key_data(key_data)).astype(jnp.float32)

    def _key_args(self, key) -> tuple:
        """A randomised model's per-example key travels as raw key data (an ordinary batched
        array through ``custom_vmap``); a deterministic model takes none."""
        if self.randomized != (key is not None):
            raise ValueError("a randomised model needs a key per call, a deterministic one none")
        return () if key is None else (jax.random.key_data(key),)

    @staticmethod
    def _check_unbatched(params_batched) -> None:
        if any(jax.tree.leaves(params_batched)):
            raise ValueError("model parameters must be the same for every example")

    def __call__(self, x: Array, key: Array | None = None) -> Array:
        """Logits [K] of one image; ``key`` draws a randomised model's randomness."""
        keys = self._key_args(key)

        @jax.custom_batching.custom_vmap
        def forward(params, x, *keys):
            return self._logits(params, x[None], *(k[None] for k in keys))[0]

        @forward.def_vmap
        def _(axis_size, in_batched, params, x, *keys):
            self._check_unbatched(in_batched[0])
            args = _broadcast(axis_size, in_batched[1:], (x, *keys))
            return self._logits(params, *args), True

        return forward(self._params, x, *keys)

    def value_and_grad(
        self, loss_fn: Callable[..., Array], x: Array, *aux: Array, key: Array | None = None
    ):
        keys = self._key_args(key)
        if keys:  # the key data rides along as the last aux array, unused by the loss
            loss_fn = (lambda f: lambda logits, *a: f(logits, *a[:-1]))(loss_fn)
            aux = (*aux, *keys)

        def batched(params, x, *aux):
            key_data = aux[-1] if keys else None

            def total(z):
                logits = self._logits(params, z, key_data)
                loss = jax.vmap(loss_fn)(logits, *aux)
                return jnp.sum(loss), (loss, logits)

            (_, (loss, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
            return loss, logits, grad

        @jax.custom_batching.custom_vmap
        def single(params, x, *aux):
            loss, logits, grad = batched(params, x[None], *(a[None] for a in aux))
            return loss[0], logits[0], grad[0]

        @single.def_vmap
        def _(axis_size, in_batched, params, x, *aux):
            self._check_unbatched(in_batched[0])
            args = _broadcast(axis_size, in_batched[1:], (x, *aux))
            return batched(params, *args), (True, True, True)

        return single(self._params, x, *aux)


# One example's attack: (model: ExampleModel, x0 [H, W, C], label, target, key, config) ->
# (adv, adv logits [K], clean logits [K], model calls, extras).
SingleAttack = Callable[..., tuple[Array, Array, Array, Array, Mapping[str, Array]]]


def run_attack(
    single: SingleAttack,
    model_fn: ModelFn,
    images,
    labels,
    key,
    config,
    *,
    targets=None,
    ids=None,
    min_classes: int = 2,
) -> AttackResult:
    """Validate the inputs, then run ``single`` on every example under one ``jit``.

    Args:
      single: the per-example attack.
      model_fn: images [B, H, W, C] in [0, 1] → logits [B, K].
      images: [B, H, W, C] floating, in [0, 1].
      labels: [B] integer true classes.
      key: one PRNG key.
      config: the attack's frozen config (static: one compilation per config).
      targets: [B] integer target classes, required iff ``config.targeted``.
      ids: [B] non-negative integers naming the examples (default ``arange(B)``); example e uses
        ``fold_in(key, ids[e])``. Pass dataset indices to make results independent of batching.
      min_classes: classes the attack needs (DLR: 3, targeted DLR: 4).
    """
    targeted = bool(getattr(config, "targeted", False))
    images, labels, targets, ids = check_inputs(
        model_fn, images, labels, targets, ids, targeted=targeted, min_classes=min_classes
    )
    result = _run(
        single, config, as_partial(model_fn), images, labels, targets, check_key(key), ids
    )
    if _is_concrete(result.clean_logits):  # under a caller's jit there is no value to check
        check_finite_logits(result.clean_logits, "the clean images")
    return result


def check_finite_logits(logits, where: str) -> None:
    """Raise ValueError if any row of ``logits`` [B, K] is not finite."""
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    if not bool(jnp.all(finite)):
        bad = [int(i) for i in jnp.flatnonzero(~finite)]
        raise ValueError(
            f"model_fn returned NaN or infinite logits on {where} at batch positions "
            f"{bad[:10]}{' …' if len(bad) > 10 else ''} ({len(bad)} of {len(finite)}): no "
            "prediction, hence no accuracy or success, is defined there"
        )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(single, config, model_fn, images, labels, targets, key, ids) -> AttackResult:
    targeted = bool(getattr(config, "targeted", False))

    model = ExampleModel(model_fn)

    def one(x0, label, target, example_id):
        return single(model, x0, label, target, jax.random.fold_in(key, example_id), config)

    adv, logits, clean_logits, calls, extras = jax.vmap(one)(images, labels, targets, ids)
    return make_result(images, labels, targets, targeted, adv, logits, clean_logits, calls,
                       extras)  # fmt: skip


def make_result(images, labels, targets, targeted, adv, logits, clean_logits, calls,
                extras) -> AttackResult:  # fmt: skip
    """The :class:`AttackResult` of adversarial images [B, H, W, C] and their logits [B, K]:
    success from the logits (False where they are not finite: a NaN prediction fools no one)
    and the perturbation norms."""
    delta = (adv - images).reshape(images.shape[0], -1)
    success = jax.vmap(lambda z, y, t: succeeded(z, y, t, targeted))(logits, labels, targets)
    success &= jnp.all(jnp.isfinite(logits), axis=-1)
    return AttackResult(
        adv_images=adv,
        success=success,
        logits=logits,
        clean_logits=clean_logits,
        linf=jnp.max(jnp.abs(delta), axis=1),
        l2=jnp.sqrt(jnp.sum(jnp.square(delta), axis=1)),
        model_calls=calls.astype(jnp.int32),
        extras=dict(extras),
    )
