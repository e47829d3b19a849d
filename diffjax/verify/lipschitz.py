"""Certified local Lipschitz bounds over a ball, by bound propagation through the Jacobian's
computation: the certified counterpart of the exact σmax(J(x0)) of :mod:`diffjax.analysis`.

    U = verify.margin_gradient_bounds(model, images, labels, eps, norm="linf")   # [B, K]
    L = verify.attention_lipschitz_bound(model, 0, u, eps, norm="l2")            # [B]

The program bounded is the model's own Jacobian-vector product g(x, v) = J_f(x)·v (``jax.jvp``
of the traced model, interpreted like any program by :mod:`diffjax.verify.program`): a tangent's
product with an x-dependent derivative (GELU' = Φ + x·φ, softmax's y ⊙ (t − Σ y ⊙ t), rsqrt's
−r/(2σ²)) is a bilinear node, the derivatives themselves are exp/erf/rsqrt/products the verifier
already relaxes. The engine bounds g over a product set X × V (:class:`engine.ProductSet`):
X = B_p(x0, ε) (∩ [0, 1]^d for pixels) and V either the unit ball B_p(0, 1) or one basis vector.

What is bounded (p the input norm, q its dual: q = 1 for ℓ∞, q = 2 for ℓ2):

* a dual norm: for a specification c, sup_{v ∈ B_p(0,1)} c·J(x)v = ‖J(x)ᵀc‖_q, so an upper bound
  U ≥ c·J(x)v on X × V bounds sup_{x ∈ X} ‖J(x)ᵀc‖_q. V is symmetric (v ↦ −v), so the lower
  bounds L of c·Jv and L' of −c·Jv each give one: U = min(−L, −L'). With c = e_c − e_j this is
  the margin-gradient Lipschitz constant of a certified radius (:func:`margin_gradient_bounds`).
* ‖J‖_{∞→∞} = max_i ‖row_i‖₁ ≤ max_i U_i with c = e_i and p = ℓ∞.
* ‖J‖_{2→2} = σmax, the smaller of two sound bounds: the Frobenius norm, σmax ≤ ‖J‖_F ≤
  (Σ_i U_i²)^½ with c = e_i and p = ℓ2 (loose by up to √rank); and the interval matrix: with
  V = {e_j} the columns give every entry, J_ij(x) ∈ [l_ij, u_ij] on X, and J = M + Δ with |Δ| ≤ R
  entrywise (M, R the midpoint and radius) gives ‖J‖₂ ≤ ‖M‖₂ + ‖|Δ|‖₂ ≤ ‖M‖₂ + ‖R‖₂ (the spectral
  norm is monotone on nonnegative matrices). At ε = 0 the columns are exact (X and V are points,
  every relaxation collapses), so this equals σmax(J(x0)) up to rounding.

Soundness is the engine's (every relaxation sound on its input box, the float64 path widened
for rounding); the norms of M and R come from an SVD widened by
:data:`diffjax.analysis.certified.SPECTRAL_SLACK`. See docs/verify.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.analysis.certified import spectral_norm_upper
from diffjax.verify import (
    _check_batch,
    _check_eps,
    _check_model,
    _check_options,
    _compiled,
    engine,
    image_fn,
)
from diffjax.verify.ops import DELTA
from diffjax.verify.program import Program, trace


def jvp_program(fn, example, precision: str = "float64") -> Program:
    """The :class:`Program` of z ↦ J_fn(z[0])·z[1], z = [x; v] stacked [2, *example.shape]."""

    def tangent(z):
        return jax.jvp(fn, (z[0],), (z[1],))[1]

    return trace(tangent, jnp.stack([example, example]), jnp.dtype(precision))


def _sets(x0, eps, norm: str, box: bool, tangent: engine.InputSet) -> engine.ProductSet:
    return engine.ProductSet((engine.input_set(x0, eps, norm, box), tangent))


def dual_norm_bounds(prog: Program, x0, eps, spec, norm: str, box: bool, method: str,
                     factor: float, alpha_steps: int = 20, alpha_lr: float = 0.1):  # fmt: skip
    """[S] upper bounds of sup_{x ∈ B_norm(x0, eps)} ‖J(x)ᵀ spec_s‖_q (∩ [0, 1]^d if ``box``).

    ``prog`` is a :func:`jvp_program`; ``spec`` [S, *output shape]. One example (vmap it)."""
    unit = engine.input_set(jnp.zeros_like(x0), jnp.ones((), x0.dtype), norm, box=False)
    both = jnp.concatenate([spec, -spec])
    low = engine.spec_bounds(prog, _sets(x0, eps, norm, box, unit), both, method, factor,
                             alpha_steps, alpha_lr)  # fmt: skip
    rows = spec.shape[0]
    return jnp.minimum(-low[:rows], -low[rows:])


def entry_bounds(prog: Program, x0, eps, norm: str, box: bool, method: str, factor: float):
    """(lo, hi) [n_out, n_in]: J_ij(x) ∈ [lo_ij, hi_ij] for x ∈ B_norm(x0, eps), one column
    (tangent e_j, a point) per pass (``lax.map``, memory of one pass)."""
    n_in = x0.size
    out_shape = prog.shapes[prog.output]
    n_out = int(np.prod(out_shape))
    eye = jnp.eye(n_out, dtype=x0.dtype).reshape(n_out, *out_shape)
    spec = jnp.concatenate([eye, -eye])

    def column(j):
        e = jax.nn.one_hot(j, n_in, dtype=x0.dtype).reshape(x0.shape)
        point = engine.input_set(e, jnp.zeros((), x0.dtype), "linf", box=False)
        low = engine.spec_bounds(prog, _sets(x0, eps, norm, box, point), spec, method, factor)
        return low[:n_out], -low[n_out:]

    lo, hi = jax.lax.map(column, jnp.arange(n_in))
    return lo.T, hi.T


def operator_norm_bound(prog: Program, x0, eps, norm: str, box: bool, method: str,
                        factor: float):  # fmt: skip
    """An upper bound of sup_{x ∈ B_norm(x0, eps)} ‖J(x)‖_{p→p}, p = ``norm`` (module docstring:
    ℓ∞ by rows, ℓ2 the smaller of the Frobenius and the interval-matrix bound)."""
    out_shape = prog.shapes[prog.output]
    n_out = int(np.prod(out_shape))
    eye = jnp.eye(n_out, dtype=x0.dtype).reshape(n_out, *out_shape)
    rows = dual_norm_bounds(prog, x0, eps, eye, norm, box, method, factor)
    if norm == "linf":
        return jnp.max(rows)
    frobenius = jnp.sqrt(jnp.sum(rows * rows)) * (1 + DELTA)
    lo, hi = entry_bounds(prog, x0, eps, norm, box, method, factor)
    mid = (lo + hi) / 2
    rad = (hi - lo) / 2 + DELTA * (jnp.abs(lo) + jnp.abs(hi))  # covers mid's rounding
    spectral = spectral_norm_upper(mid) + spectral_norm_upper(rad)
    return jnp.minimum(frobenius, jnp.where(jnp.isfinite(spectral), spectral, jnp.inf))


def _build_margin_gradients(model, norm, method, precision, alpha_steps, alpha_lr):
    c = model.config
    dtype = jnp.dtype(precision)
    example = jnp.zeros((c.image_size, c.image_size, c.channels), dtype)
    prog = jvp_program(image_fn(model), example, precision)
    factor = engine.slack_factor(prog, precision == "float64", int(np.prod(prog.shapes[0])))

    def one(x, label, eps):
        spec = engine.margin_spec(label, c.num_classes, dtype)
        up = dual_norm_bounds(prog, x.astype(dtype), eps.astype(dtype), spec, norm, True, method,
                              factor, alpha_steps, alpha_lr)  # fmt: skip
        return jnp.where(jnp.arange(c.num_classes) == label, 0.0, up)

    return jax.jit(jax.vmap(one))


def margin_gradient_bounds(model, images, labels, eps, norm: str = "linf",
                           method: str = "crown", *, precision: str = "float64",
                           alpha_steps: int = 20, alpha_lr: float = 0.1):  # fmt: skip
    """Certified upper bounds of the margins' gradient norms over B_norm(x, eps) ∩ [0, 1]^d.

    Args: as :func:`diffjax.verify.margin_lower_bounds`.

    Returns:
      [B, K] float64: U_j ≥ ‖∇_x(z_c − z_j)(x)‖_q for every x in the set (q = 1 for ℓ∞, 2 for
      ℓ2; column c is 0). By the mean-value theorem the margin j stays positive on the ball of
      radius m_j/U_j around x (m_j its value at x) as long as that is ≤ eps.
    """
    _check_model(model)
    _check_options(norm, method, precision, alpha_steps, alpha_lr)
    images, labels = _check_batch(model, images, labels)
    eps = _check_eps(eps, images.shape[0])
    fn = _compiled(model, "margin_gradients", _build_margin_gradients, norm=norm, method=method,
                   precision=precision, alpha_steps=alpha_steps, alpha_lr=alpha_lr)  # fmt: skip
    return fn(images, labels, eps).astype(jnp.float64)


def _build_attention(model, layer, norm, method, precision):
    from diffjax.analysis import attention_layer

    c = model.config
    dtype = jnp.dtype(precision)
    example = jnp.zeros((c.num_tokens, c.width), dtype)
    prog = jvp_program(functools.partial(attention_layer, model, layer=layer), example, precision)
    factor = engine.slack_factor(prog, precision == "float64", int(np.prod(prog.shapes[0])))

    def one(u, eps):
        return operator_norm_bound(prog, u.astype(dtype), eps.astype(dtype), norm, False, method,
                                   factor)  # fmt: skip

    return jax.jit(jax.vmap(one))


def attention_lipschitz_bound(model, layer: int, inputs, eps, norm: str = "l2",
                              method: str = "crown", *, precision: str = "float64"):  # fmt: skip
    """Certified upper bounds of layer ``layer``'s attention Lipschitz constant over a ball.

    The map is u ↦ Attn_l(u) on the attention input u = LN1(h_l) (:func:`diffjax.analysis.
    attention_layer`), [N, D] → [N, D].

    Args:
      inputs: [B, N, D] centres u0 (e.g. ``analysis.layer_input(model, images, layer,
        "attention_input")``).
      eps: radius, a scalar or [B] (the norm's units, over all N·D entries; no box).
      norm: ``"l2"`` (bounds σmax(J(u))) or ``"linf"`` (bounds ‖J(u)‖_{∞→∞}).
      method: ``"ibp"``, ``"crown-ibp"`` or ``"crown"``.

    Returns:
      [B] float64: an upper bound of sup_{u ∈ B_norm(u0, eps)} ‖J(u)‖_{p→p}.
    """
    _check_model(model)
    _check_options(norm, method, precision, 1, 0.1)
    if method == "alpha-crown":
        raise ValueError("attention_lipschitz_bound takes method 'ibp', 'crown-ibp' or 'crown'")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.config.depth:
        raise ValueError(f"layer must be an integer in 0..{model.config.depth - 1}, got {layer!r}")
    c = model.config
    inputs = jnp.asarray(inputs)
    want = (c.num_tokens, c.width)
    if inputs.ndim != 3 or tuple(inputs.shape[1:]) != want:
        raise ValueError(f"inputs must be [B, {want[0]}, {want[1]}], got shape "
                         f"{tuple(inputs.shape)}")  # fmt: skip
    if not (jnp.issubdtype(inputs.dtype, jnp.floating) and np.all(np.isfinite(inputs))):
        raise ValueError("inputs must be finite floating-point values")
    eps = _check_eps(eps, inputs.shape[0])
    fn = _compiled(model, "attention", _build_attention, layer=layer, norm=norm, method=method,
                   precision=precision)  # fmt: skip
    return fn(inputs, eps).astype(jnp.float64)


def adversarial_max(objective, x0, eps, norm: str, box: bool, key, *, steps: int = 40,
                    restarts: int = 4):  # fmt: skip
    """The largest objective(x) found in B_norm(x0, eps) (∩ [0, 1]^d if ``box``): a *lower*
    bound of the supremum, the other side of the certified bounds.

    Adam (optax) on −objective from the centre and ``restarts`` − 1 random starts, projected
    onto the set after every step; the best value seen is kept. Traceable.
    """

    def project(x):
        d = x - x0
        if norm == "linf":
            d = jnp.clip(d, -eps, eps)
        else:
            d = d * jnp.minimum(1.0, eps / (jnp.linalg.norm(d) + 1e-300))
        return jnp.clip(x0 + d, 0.0, 1.0) if box else x0 + d

    # A step of about a quarter of the radius (Adam's steps are ~lr per coordinate).
    opt = optax.adam(eps / 4 if norm == "linf" else eps / (4 * np.sqrt(np.size(x0))))

    def run(i, k):
        start = jax.random.uniform(k, x0.shape, x0.dtype, -eps, eps)
        x = project(x0 + jnp.where(i > 0, start, 0.0))

        def step(carry, _):
            x, state, best = carry
            value, grad = jax.value_and_grad(objective)(x)
            updates, state = opt.update(-grad, state)
            x = project(optax.apply_updates(x, updates))
            return (x, state, jnp.maximum(best, value)), None

        init = (x, opt.init(x), jnp.asarray(-jnp.inf, x0.dtype))
        (x, _, best), _ = jax.lax.scan(step, init, length=steps)
        return jnp.maximum(best, objective(x))

    keys = jax.random.split(key, restarts)
    return jnp.max(jax.jit(jax.vmap(run))(jnp.arange(restarts), keys))
