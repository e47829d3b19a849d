"""Local Lipschitz constants of a map f at x, three kinds, each labelled for what it is.

* ``exact_local``: L(x) = ‖∂f/∂x (x)‖₂, the spectral norm of the Jacobian at x, i.e. the limit
  r → 0 of sup_{‖ξ‖≤r} ‖f(x+ξ) − f(x)‖/‖ξ‖ (ℓ2 on both sides). By the full Jacobian and an
  SVD (``"svd"``, exact to rounding) where it fits, otherwise matrix-free by Lanczos with a
  residual bound (``"lanczos"``, see :mod:`.lanczos`), or by power iteration (``"power"``).
* ``empirical_sampling``: the paper's estimate max_i ‖f(x+ξ_i) − f(x)‖/‖ξ_i‖ over random ξ_i
  uniform in the ℓ2 ball of radius r. Every sampled ratio is a lower bound of the Lipschitz
  constant of f on the ball B(x, r); random directions typically see ≈ ‖J‖_F/√n, far below L(x).
* ``empirical_pgd``: the same ratio maximised by projected (normalised) gradient ascent over the
  sphere ‖ξ‖ = r (after Yang et al. 2020, who use ℓ1/ℓ∞ norms; here ℓ2/ℓ2 to match L(x)). Also a
  lower bound on B(x, r); the ratio is re-evaluated outside the ascent loop.

For small r both empirical values approach directional derivatives, hence ≤ L(x) up to O(r).
Maps of interest (:mod:`.functions`): the attention layer u ↦ Attn(u) and logits ↦ of the image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from diffjax.analysis.lanczos import (
    SingularTriplets,
    lanczos_svd,
    linear_operator,
    power_iteration,
    singular_values,
)

Array = jax.Array
Fn = Callable[[Array], Array]
Method = Literal["auto", "svd", "lanczos", "power"]
MAX_SVD_ENTRIES = 2**22  # a 16 MiB float32 Jacobian; its SVD takes seconds on a CPU


@flax.struct.dataclass
class LipschitzEstimate:
    """One local Lipschitz value.

    Attributes:
      value: [] the estimate.
      bound: [] accuracy of an exact value: some singular value of J lies within ``bound`` of
        ``value`` (Lanczos/power residual; 0 for ``"svd"``, exact to rounding); NaN for empirical
        and wherever ``value`` is not finite (an accuracy of 0 next to NaN would be a claim).
      products: [] JVPs + VJPs (exact) or evaluations of f (empirical).
      kind: ``"exact_local"``, ``"empirical_sampling"`` or ``"empirical_pgd"``.
      method: ``"svd"``, ``"lanczos"``, ``"power"``, ``"sampling"`` or ``"pgd"``.
    """

    value: Array
    bound: Array
    products: Array
    kind: str = flax.struct.field(pytree_node=False)
    method: str = flax.struct.field(pytree_node=False)


def jacobian_matrix(f: Fn, x: Array) -> Array:
    """The Jacobian of ``f`` at ``x`` as an [m, n] matrix (jacfwd or jacrev, the cheaper)."""
    m = jax.eval_shape(f, x).size
    jac = jax.jacfwd if x.size <= m else jax.jacrev
    return jac(f)(x).reshape(m, x.size)


def choose_method(f: Fn, x: Array, max_entries: int = MAX_SVD_ENTRIES) -> Literal["svd", "lanczos"]:
    """``"svd"`` when the Jacobian has at most ``max_entries`` entries, else ``"lanczos"``."""
    return "svd" if jax.eval_shape(f, x).size * x.size <= max_entries else "lanczos"


def exact_local_lipschitz(
    f: Fn,
    x: Array,
    *,
    method: Method = "auto",
    key: Array | None = None,
    max_entries: int = MAX_SVD_ENTRIES,
    max_iters: int = 100,
    tol: float | None = None,
) -> LipschitzEstimate:
    """L(x) = σmax(∂f/∂x) at one point (traceable; vmap over examples by the caller).

    Args:
      f: a function of one array (e.g. ``lambda u: attention_layer(model, u, l)``).
      x: the point.
      method: ``"svd"``, ``"lanczos"``, ``"power"``, or ``"auto"`` (SVD up to ``max_entries``).
      key: start vector of Lanczos / power iteration (required for those).
      max_iters, tol: Lanczos / power iteration limits (:func:`.lanczos.lanczos_svd`).
    """
    if method == "auto":
        method = choose_method(f, x, max_entries)
    if method == "svd":
        m = jax.eval_shape(f, x).size
        s = singular_values(jacobian_matrix(f, x))
        value, bound, products = s[0], jnp.zeros((), s.dtype), jnp.asarray(min(m, x.size))
    elif method in ("lanczos", "power"):
        if key is None:
            raise ValueError(f"method {method!r} needs a PRNG key for its start vector")
        r = top_singular_values(f, x, k=1, key=key, max_iters=max_iters, tol=tol, method=method)
        value, bound, products = r.values[0], r.bounds[0], r.products
    else:
        raise ValueError(f"method must be 'auto', 'svd', 'lanczos' or 'power', got {method!r}")
    bound = jnp.where(jnp.isfinite(value), bound, jnp.nan)
    return LipschitzEstimate(value, bound, products, "exact_local", method)


def top_singular_values(
    f: Fn,
    x: Array,
    *,
    k: int,
    key: Array,
    max_iters: int = 100,
    tol: float | None = None,
    method: Literal["lanczos", "power"] = "lanczos",
) -> SingularTriplets:
    """Top-k singular triplets of ∂f/∂x at ``x``, matrix-free (power iteration: k = 1 only)."""
    matvec, rmatvec, _ = linear_operator(f, x)
    if method == "power":
        if k != 1:
            raise ValueError("power iteration gives only the top singular value (k = 1)")
        return power_iteration(
            matvec, rmatvec, x.size, key=key, max_iters=max_iters, tol=tol, dtype=x.dtype
        )
    return lanczos_svd(
        matvec, rmatvec, x.size, key=key, k=k, max_iters=max_iters, tol=tol, dtype=x.dtype
    )


def jacobian_spectrum(f: Fn, x: Array) -> Array:
    """All min(m, n) singular values of ∂f/∂x at ``x``, descending, by a full SVD (small cases)."""
    return singular_values(jacobian_matrix(f, x))


def _ratio(f: Fn, x: Array, fx: Array, xi: Array) -> Array:
    return jnp.linalg.norm((f(x + xi) - fx).ravel()) / jnp.linalg.norm(xi.ravel())


def _check_radius(radius: float) -> None:
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")


def sampled_lipschitz(
    f: Fn, x: Array, *, radius: float, num_samples: int, key: Array, batch: int = 32
) -> LipschitzEstimate:
    """max over ξ uniform in the ℓ2 ball of radius r of ‖f(x+ξ) − f(x)‖/‖ξ‖ (a lower bound).

    Args:
      radius: r > 0, in the units of x.
      num_samples: number of ξ.
      key: PRNG key of the samples.
      batch: samples evaluated together.
    """
    _check_radius(radius)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    fx = f(x)
    kd, kr = jax.random.split(key)
    d = jax.random.normal(kd, (num_samples, *x.shape), x.dtype)
    d = d / jnp.linalg.norm(d.reshape(num_samples, -1), axis=1).reshape(-1, *([1] * x.ndim))
    # Radius r·U^(1/n) makes ξ uniform in the ball (it concentrates at r in high dimension).
    rad = radius * jax.random.uniform(kr, (num_samples,), x.dtype) ** (1 / x.size)
    xi = d * rad.reshape(-1, *([1] * x.ndim))
    ratios = jax.lax.map(lambda e: _ratio(f, x, fx, e), xi, batch_size=batch)
    return LipschitzEstimate(
        jnp.max(ratios),
        jnp.asarray(jnp.nan, x.dtype),
        jnp.asarray(num_samples + 1),
        "empirical_sampling",
        "sampling",
    )


def pgd_lipschitz(
    f: Fn,
    x: Array,
    *,
    radius: float,
    steps: int,
    key: Array,
    step_size: float = 0.5,
) -> tuple[LipschitzEstimate, Array]:
    """Maximise ‖f(x+ξ) − f(x)‖/‖ξ‖ over ‖ξ‖ = r by normalised gradient ascent (a lower bound).

    Args:
      radius: r > 0.
      steps: ascent steps.
      key: PRNG key of the random start on the sphere.
      step_size: first step length as a fraction of r; it decays linearly to 0 (the ascent
        keeps the best ξ seen).

    Returns:
      (estimate, ξ [x.shape]): the ratio re-evaluated at the returned ξ, and ξ (‖ξ‖ = r).
    """
    _check_radius(radius)
    fx = f(x)

    def project(xi):
        return xi * (radius / jnp.linalg.norm(xi.ravel()))

    def step(t, state):
        xi, best_xi, best = state
        value, grad = jax.value_and_grad(lambda e: _ratio(f, x, fx, e))(xi)
        better = value > best
        best_xi, best = jnp.where(better, xi, best_xi), jnp.where(better, value, best)
        eta = step_size * radius * (1 - t / steps)
        xi = project(xi + eta * grad / jnp.linalg.norm(grad.ravel()))
        return xi, best_xi, best

    xi0 = project(jax.random.normal(key, x.shape, x.dtype))
    xi, best_xi, best = jax.lax.fori_loop(
        0, steps, step, (xi0, xi0, jnp.asarray(-jnp.inf, x.dtype))
    )
    last = _ratio(f, x, fx, xi)
    best_xi = jnp.where(last > best, xi, best_xi)
    value = _ratio(f, x, f(x), best_xi)  # re-evaluated, independent of the loop's bookkeeping
    estimate = LipschitzEstimate(
        value, jnp.asarray(jnp.nan, x.dtype), jnp.asarray(2 * steps + 3), "empirical_pgd", "pgd"
    )
    return estimate, best_xi
