"""Certified radius per example by bisection on ε, and certified-accuracy curves, for each of
diffjax's certifiers: the interval/gradient certificate (:mod:`diffjax.analysis.certified`,
``"interval"``) and the bound-propagation verifier's methods (:mod:`diffjax.verify`).

    radii = certified_radii(model, images, labels, norm="linf", method="crown", hi=0.05, steps=10)
    acc = certified_accuracy(radii, np.linspace(0.0, 0.05, 11))

Both sides use the same bisection (:func:`diffjax.verify.bisect`), so their radii are
comparable: ε is certified iff every margin z_c − z_j (j ≠ c) is positive on the whole ball.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import verify
from diffjax.analysis import certified as C

METHODS = ("interval", *verify.METHODS)


def check_method(method, field: str = "method", methods: tuple[str, ...] = METHODS) -> None:
    """Refuse a method not in ``methods`` (default: every certifier's), naming the config
    ``field`` and the choices; ``methods=verify.METHODS`` for the bound-propagation verifier."""
    if method not in methods:
        raise ValueError(f"{field} must be one of {methods}, got {method!r}")


def _interval_certified(model, image, label, eps, norm: str):
    """Whether :mod:`diffjax.analysis.certified` certifies B_norm(image, eps): the margins'
    value enclosure is positive, or the mean-value radius reaches eps."""
    program = C.logits_program(model, label)
    margins = program(C.Ball(image, jnp.zeros_like(eps), norm), jnp.zeros_like(image))[0].mid
    by_interval, by_gradient = C._margin_radius(
        C.jacobian_bounds(program, C.Ball(image, eps, norm)), margins, label, eps, norm
    )
    return jnp.maximum(by_interval, by_gradient) >= eps


@functools.partial(jax.jit, static_argnames=("norm", "steps"))
def _interval_radii(model, images, labels, hi, norm: str, steps: int):
    # lax.map, not vmap: the Jacobian enclosures of a whole batch would not fit in memory.
    def one(xy):
        x, y = xy
        return verify.bisect(lambda e: _interval_certified(model, x, y, e, norm), hi, steps)

    return jax.lax.map(one, (images, labels))


def certified_radii(
    model,
    images,
    labels,
    *,
    norm: str,
    method: str,
    hi: float,
    steps: int,
    intermediate: str = "checkpoint",
):
    """Per example, the largest certified radius found by ``steps`` halvings of [0, hi].

    Args:
      model: a float64 per-layer :class:`diffjax.vit.ViT` (``jax_enable_x64`` on).
      images: [B, H, W, C] float64 pixels in [0, 1].
      labels: [B] integer classes.
      norm: ``"linf"`` or ``"l2"`` (radii in pixel units of that norm).
      method: one of :data:`METHODS`.
      hi, steps: the bisection interval's upper end (> 0) and number of halvings (≥ 1).
      intermediate: CROWN's intermediate bounds (:func:`diffjax.verify.margin_lower_bounds`).

    Returns:
      [B] float64 NumPy: certified radii, 0 for a misclassified example or one whose radius is
      below hi·2^-steps; hi where hi itself is certified.
    """
    check_method(method)
    if not (isinstance(hi, numbers.Real) and np.isfinite(hi) and hi > 0):
        raise ValueError(f"hi must be a finite number > 0, got {hi!r}")
    if method != "interval":
        radii = verify.certified_radius(
            model,
            images,
            labels,
            norm=norm,
            method=method,
            hi=hi,
            steps=steps,
            intermediate=intermediate,
        )
        return np.asarray(radii, np.float64)
    # verify.certified_radius validates these itself; the interval path does it here.
    verify._check_model(model)
    verify._check_options(norm, "ibp", "float64", 1, 1.0)
    if intermediate != "checkpoint":  # named here: the check above would name method 'ibp'
        raise ValueError(f"intermediate={intermediate!r} would be ignored by method='interval': "
                         "only 'crown' and 'alpha-crown' compute intermediate bounds by CROWN")
    images, labels = verify._check_batch(model, images, labels)
    verify._check_steps(steps)
    radii = _interval_radii(model, images, labels, jnp.asarray(float(hi)), norm, steps)
    return np.asarray(radii, np.float64)


def certified_accuracy(radius, radii) -> list[float]:
    """Fraction of examples certified (correct, radius ≥ r) at each r of ``radii``; at r = 0
    those with a positive radius."""
    radius = np.asarray(radius)
    return [float(np.mean(radius >= r)) if r > 0 else float(np.mean(radius > 0))
            for r in radii]  # fmt: skip
