"""Bound-propagation verifier for diffjax ViTs / DiffViTs over the model's own traced program.

    lb = verify.margin_lower_bounds(model, images, labels, eps, norm="linf", method="crown")
    radii = verify.certified_radius(model, images, labels, norm="linf", method="crown")

The model is traced (``jax.make_jaxpr``) and every primitive of the program is bounded by its own
relaxation (:mod:`diffjax.verify.ops`); anything the verifier does not model is refused with an
error naming the primitive. Methods: ``"ibp"`` (intervals), ``"crown-ibp"`` (IBP intermediate
bounds, CROWN for the margins), ``"crown"`` (CROWN everywhere), ``"alpha-crown"`` (CROWN with
the relaxations optimised per example). Sets: B_p(x, ε) ∩ [0, 1]^d, p ∈ {ℓ∞, ℓ2}. See
docs/verify.md.
"""

from __future__ import annotations

import functools
import numbers
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.verify import engine
from diffjax.verify.program import Program, trace

NORMS = ("linf", "l2")
METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
PRECISIONS = ("float64", "float32")
# How CROWN bounds the intermediate variables (engine.intermediate_bounds): substituting the
# linear bounds kept at checkpoints (linear in depth), or full passes to the input (tighter).
INTERMEDIATE = ("checkpoint", "full")


def _check_model(model) -> None:
    _check_layout(model)
    c = model.config
    if c.dtype != "float64":
        raise ValueError(
            f"diffjax.verify bounds the float64 model, this one computes in {c.dtype}: use "
            "diffjax.analysis.with_dtype(model, 'float64') (inside jax.enable_x64)"
        )
    if not jax.config.jax_enable_x64:
        raise RuntimeError("diffjax.verify needs jax_enable_x64 (e.g. `with jax.enable_x64():`)")


def _check_layout(model) -> None:
    """A diffjax ViT whose program can be traced: the per-layer model, without remat."""
    from diffjax.vit import ViT

    if not isinstance(model, ViT):
        raise TypeError(f"diffjax.verify takes a diffjax.vit.ViT, got {type(model).__name__}")
    c = model.config
    if c.scan_layers:
        raise ValueError(
            "diffjax.verify needs the per-layer model, this one has scan_layers=True: "
            "use diffjax.vit.relayout(model, False)"
        )
    if c.remat:
        raise ValueError(
            "diffjax.verify cannot trace a remat=True model (nnx.remat's state handling does not "
            "run under jax.make_jaxpr); remat changes no value: verify the same parameters in a "
            "model built with remat=False"
        )


def _check_options(
    norm, method, precision, alpha_steps, alpha_lr, intermediate="checkpoint"
) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(alpha_steps, bool) or not isinstance(alpha_steps, int) or alpha_steps < 1:
        raise ValueError(f"alpha_steps must be a positive integer, got {alpha_steps!r}")
    if not (isinstance(alpha_lr, numbers.Real) and np.isfinite(alpha_lr) and alpha_lr > 0):
        raise ValueError(f"alpha_lr must be a finite positive number, got {alpha_lr!r}")
    if intermediate not in INTERMEDIATE:
        raise ValueError(f"intermediate must be one of {INTERMEDIATE}, got {intermediate!r}")
    if intermediate != "checkpoint" and method not in ("crown", "alpha-crown"):
        raise ValueError(
            f"intermediate={intermediate!r} would be ignored by method={method!r}: "
            "only 'crown' and 'alpha-crown' compute intermediate bounds by CROWN"
        )


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _check_batch(model, images, labels):
    c = model.config
    images = jnp.asarray(images)
    want = (c.image_size, c.image_size, c.channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images must be [B, {want[0]}, {want[1]}, {want[2]}], got shape "
                         f"{tuple(images.shape)}")  # fmt: skip
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    pixels = np.asarray(images)
    if not (np.all(np.isfinite(pixels)) and pixels.min() >= 0 and pixels.max() <= 1):
        raise ValueError("images must be finite pixels in [0, 1]")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be [{images.shape[0]}] integers, got shape "
                         f"{labels.shape} dtype {labels.dtype}")  # fmt: skip
    if labels.size and (labels.min() < 0 or labels.max() >= c.num_classes):
        raise ValueError(f"labels must be in 0..{c.num_classes - 1}")
    return images, jnp.asarray(labels)


def _check_eps(eps, batch: int, name: str = "eps"):
    arr = np.asarray(eps, dtype=float)
    if arr.ndim not in (0, 1) or (arr.ndim == 1 and arr.shape != (batch,)):
        raise ValueError(f"{name} must be a scalar or [{batch}], got shape {arr.shape}")
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 0)):
        raise ValueError(f"{name} must be finite and >= 0, got {eps!r}")
    return jnp.broadcast_to(jnp.asarray(arr), (batch,))


# Programs and compiled functions per model, dropped with the model; rebuilt when its
# parameters are replaced (the key holds the parameter arrays' identities).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model, kind: str, build=None, **options):
    """``build(model, **options)`` (default: this module's ``_build`` of ``kind``), cached."""
    from flax import nnx

    leaves = tuple(id(x) for x in jax.tree.leaves(nnx.state(model)))
    # Only alpha-CROWN reads its step count and rate: every other method's program is one entry,
    # whatever those are.
    keyed = {k: v for k, v in options.items()
             if options.get("method") == "alpha-crown" or not k.startswith("alpha_")}  # fmt: skip
    key = (kind, leaves, tuple(sorted(keyed.items())))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        for stale in [k for k in per_model if k[1] != leaves]:  # older parameters' programs
            del per_model[stale]
        build = build or functools.partial(_build, kind=kind)
        per_model[key] = build(model, **options)
    return per_model[key]


def program(model, precision: str = "float64") -> Program:
    """The traced :class:`~diffjax.verify.program.Program` of ``model`` on one image."""
    _check_model(model)
    c = model.config
    example = jnp.zeros((c.image_size, c.image_size, c.channels), jnp.float64)
    return trace(image_fn(model), example, jnp.dtype(precision))


def image_fn(model):
    """The model's logits [K] of one image [H, W, C]: the function every program traces."""
    return lambda x: model(x[None])[0]


# Examples bounded at once (vmapped) per method by default: CROWN's intermediate bounds of one
# 17-token image take gigabytes, IBP's kilobytes.
BATCH_SIZES = {"ibp": 64, "crown-ibp": 4, "crown": 1, "alpha-crown": 1}


def _build(model, kind, norm, method, precision, alpha_steps, alpha_lr, batch_size, intermediate):
    prog = program(model, precision)
    dtype = jnp.dtype(precision)
    factor = engine.slack_factor(prog, precision == "float64", int(np.prod(prog.shapes[0])))
    margins = functools.partial(engine.margin_bounds, prog, method=method, factor=factor,
                                alpha_steps=alpha_steps, alpha_lr=alpha_lr,
                                full=intermediate == "full")  # fmt: skip

    def one(x, label, eps):
        return margins(engine.input_set(x.astype(dtype), eps.astype(dtype), norm), label)

    # lax.map in chunks of batch_size: memory bounded by the chunk, not by the batch.
    if kind == "margins":
        return jax.jit(lambda xs, ys, es: jax.lax.map(lambda a: one(*a), (xs, ys, es),
                                                      batch_size=batch_size))  # fmt: skip

    def radii(xs, labels, hi, steps):
        def radius(a):
            x, label = a
            return bisect(lambda eps: _all_positive(one(x, label, eps), label), hi, steps)

        return jax.lax.map(radius, (xs, labels), batch_size=batch_size)

    return jax.jit(radii, static_argnums=3)


def _check_batch_size(batch_size, method):
    if batch_size is None:
        return BATCH_SIZES[method]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return batch_size


def bisect(certified, hi, steps: int):
    """The largest ε on the grid of [0, hi] that ``steps`` halvings reach with ``certified(ε)``.

    ``certified``: a traceable map from a scalar radius to a boolean scalar (the example is
    certified on its ball of that radius). ε = hi where hi itself is certified, 0 where ε = 0
    is not (a misclassified example). Runs in ``lax`` (one trace, jit/vmap-able).
    """
    # One call of ``certified`` in the whole loop (i = 0 tests 0, i = 1 tests hi, then the
    # midpoints): each call site is a copy of the verifier's program for XLA to compile, and
    # three of them (two outside the loop) took 2.9 times as long (CROWN, one-layer tiny ViT).

    def body(i, carry):
        lo, up, at_zero, at_hi = carry
        eps = jnp.where(i == 0, jnp.zeros_like(hi), jnp.where(i == 1, hi, (lo + up) / 2))
        ok = certified(eps)
        halving = i >= 2
        return (jnp.where(halving & ok, eps, lo), jnp.where(halving & ~ok, eps, up),
                jnp.where(i == 0, ok, at_zero), jnp.where(i == 1, ok, at_hi))  # fmt: skip

    no = jnp.zeros((), bool)
    lo, _, at_zero, at_hi = jax.lax.fori_loop(0, steps + 2, body, (jnp.zeros_like(hi), hi, no, no))
    return jnp.where(at_zero, jnp.where(at_hi, hi, lo), 0.0)


def _all_positive(low, label):
    return jnp.all((low > 0) | (jnp.arange(low.shape[0]) == label))


def margin_lower_bounds(model, images, labels, eps, norm: str = "linf", method: str = "crown",
                        *, precision: str = "float64", alpha_steps: int = 20,
                        alpha_lr: float = 0.1, batch_size: int | None = None,
                        intermediate: str = "checkpoint"):  # fmt: skip
    """Certified lower bounds of the logit margins over B_norm(x, eps) ∩ [0, 1]^d.

    Args:
      model: a float64 :class:`diffjax.vit.ViT` (loop layout; ``jax_enable_x64`` on).
      images: [B, H, W, C] pixels in [0, 1].
      labels: [B] integer classes c.
      eps: radius, a scalar or [B] (pixel units, the norm's).
      norm: ``"linf"`` or ``"l2"``.
      method: ``"ibp"``, ``"crown-ibp"``, ``"crown"`` or ``"alpha-crown"``.
      precision: ``"float64"`` (sound including rounding) or ``"float32"`` (faster; not
        rounding-sound).
      alpha_steps, alpha_lr: Adam steps and learning rate of alpha-CROWN.
      batch_size: examples bounded at once (the rest wait their turn: memory grows with it,
        not with B); ``None``: :data:`BATCH_SIZES` of the method.
      intermediate: CROWN's intermediate bounds (``crown``/``alpha-crown`` only):
        ``"checkpoint"`` substitutes the linear bounds kept at the residual stream and the
        other checkpoints (linear in depth); ``"full"`` takes every pass back to the input, as
        auto_LiRPA does (tighter, quadratic in depth, several times slower and longer to
        compile).

    Returns:
      [B, K] float64: lower bounds of z_c − z_j for every x in the set (column c is 0). The image
      is certified iff every other column is > 0.
    """
    _check_model(model)
    _check_options(norm, method, precision, alpha_steps, alpha_lr, intermediate)
    images, labels = _check_batch(model, images, labels)
    eps = _check_eps(eps, images.shape[0])
    fn = _compiled(model, "margins", norm=norm, method=method, precision=precision,
                   alpha_steps=alpha_steps, alpha_lr=alpha_lr, intermediate=intermediate,
                   batch_size=_check_batch_size(batch_size, method))  # fmt: skip
    return fn(images, labels, eps).astype(jnp.float64)


def certified_radius(model, images, labels, norm: str = "linf", method: str = "crown", *,
                     hi: float | None = None, steps: int = 12, precision: str = "float64",
                     alpha_steps: int = 20, alpha_lr: float = 0.1,
                     batch_size: int | None = None, intermediate: str = "checkpoint"):  # fmt: skip
    """The largest certified radius per example, by bisection on [0, hi] (``steps`` halvings).

    Returns [B]: a radius at which :func:`margin_lower_bounds` certifies the example (within
    hi·2^-steps of the largest such radius, or ``hi`` itself), 0 if not even ε = 0 is certified
    (a misclassified image) or if no bisection point above 0 is (a radius below hi·2^-steps:
    choose ``hi`` near the expected radius). One jitted call, ``batch_size`` examples at a
    time, ``intermediate`` as in :func:`margin_lower_bounds`.
    """
    _check_model(model)
    _check_options(norm, method, precision, alpha_steps, alpha_lr, intermediate)
    images, labels = _check_batch(model, images, labels)
    hi = (0.1 if norm == "linf" else 1.0) if hi is None else hi
    _check_eps(hi, images.shape[0], "hi")
    _check_steps(steps)
    fn = _compiled(model, "radius", norm=norm, method=method, precision=precision,
                   alpha_steps=alpha_steps, alpha_lr=alpha_lr, intermediate=intermediate,
                   batch_size=_check_batch_size(batch_size, method))  # fmt: skip
    return fn(images, labels, jnp.asarray(float(hi), jnp.dtype(precision)), steps).astype(
        jnp.float64
    )


def training_program(model) -> Program:
    """The :class:`~diffjax.verify.program.Program` of ``model`` in its own dtype (float32),
    traced where it is called: inside a ``jit``/``grad`` over the parameters it closes over
    their tracers, so bounds computed from it are differentiable in the parameters.

    Raises the verifier's ValueError for anything it does not model (a primitive, a
    ``scan_layers`` or ``remat`` model, a bfloat16 conversion).
    """
    _check_layout(model)
    c = model.config
    dtype = jnp.dtype(c.accum_dtype)
    return trace(image_fn(model), jnp.zeros((c.image_size, c.image_size, c.channels), dtype),
                 dtype)  # fmt: skip


def check_trainable(config) -> None:
    """Raise the verifier's own error if it refuses the model of ``config`` (a ViTConfig).

    Traces a model of that config abstractly (``jax.eval_shape``: no parameter is made), in
    evaluation mode, as certified training bounds it.
    """
    from flax import nnx

    from diffjax.vit import ViT

    def probe():
        model = ViT(config, rngs=nnx.Rngs(0))
        model.eval()
        training_program(model)
        return jnp.zeros(())

    jax.eval_shape(probe)


def training_margins(model, images, labels, eps, beta=None):
    """Lower bounds of the logit margins over B∞(x, eps) ∩ [0, 1]^d for certified training:
    IBP (``beta`` None) or β·CROWN-IBP + (1 − β)·IBP (Zhang et al. 2020).

    Differentiable in the model's parameters (call it inside the training step's jit), in the
    model's dtype and without rounding slack: the numbers a loss needs, not certificates
    (certify with :func:`margin_lower_bounds`). ``beta == 0`` skips the CROWN-IBP pass.

    Args:
      model: a per-layer float32 :class:`diffjax.vit.ViT` in evaluation mode.
      images: [B, H, W, C] pixels in [0, 1].
      labels: [B] integer classes c.
      eps: scalar ℓ∞ radius (pixel units), may be traced.
      beta: None, or a scalar in [0, 1] (may be traced).

    Returns:
      [B, K]: lower bounds of z_c − z_j (column c is 0).
    """
    prog = training_program(model)
    dtype = jnp.dtype(model.config.accum_dtype)
    eps = jnp.asarray(eps, dtype)

    def sets(x):
        return engine.input_set(x.astype(dtype), eps, "linf")

    def ibp(x, label):
        return engine.margin_bounds(prog, sets(x), label, "ibp", 0.0)

    if beta is None:
        return jax.vmap(ibp)(images, labels)

    def mixed(x, label):
        low_ibp, low_crown = engine.ibp_and_crown_ibp(prog, sets(x), label, 0.0)
        return beta * low_crown + (1 - beta) * low_ibp

    return jax.lax.cond(beta > 0, jax.vmap(mixed), jax.vmap(ibp), images, labels)


# The Lipschitz bounds use the checks and the cache above.
from diffjax.verify.lipschitz import attention_lipschitz_bound, margin_gradient_bounds  # noqa: E402

__all__ = ["BATCH_SIZES", "INTERMEDIATE", "METHODS", "NORMS", "attention_lipschitz_bound", "bisect",
           "certified_radius", "check_trainable", "margin_gradient_bounds",
           "margin_lower_bounds", "program", "training_margins", "training_program"]  # fmt: skip
