"""Matrix-free top singular values: Golub-Kahan-Lanczos bidiagonalisation and power iteration.

The operator A (m × n) is given only by its products v ↦ Av and u ↦ Aᵀu; for a Jacobian these are a
JVP and a VJP (:func:`linear_operator`), so the Jacobian is never materialised.

Lanczos (Golub-Kahan) builds orthonormal bases V_j (n × j) and U_j (m × j), with full
reorthogonalisation (twice, classical Gram-Schmidt), such that A V_j = U_j B_j with B_j upper
bidiagonal; the singular values of B_j (Ritz values) approximate the largest of A. Each step costs
one JVP and one VJP. The loop stops when the estimated residual of each of the top k Ritz triples
is below ``tol`` · σ̃1, or after ``max_iters`` steps.

Accuracy statement (both methods). For a Ritz triple (σ̃, ũ, ṽ) with unit ũ, ṽ the residual

    b = √(‖Aṽ − σ̃ũ‖² + ‖Aᵀũ − σ̃ṽ‖²) / √2

is recomputed explicitly at the end (2 products per triple; it does not rely on the recurrences, so
loss of orthogonality cannot hide in it). b is the residual of the unit eigen-pair ((ũ, ṽ)/√2, σ̃)
of the symmetric [[0, A], [Aᵀ, 0]], whose eigenvalues are ±σ_i(A) (and 0), so **some singular
value of A lies in [σ̃ − b, σ̃ + b]**. Moreover σ̃1 ≤ σ1(A) (a Ritz value of a Galerkin projection,
and ‖Av‖ for unit v in power iteration). When the start vector is not deficient in the top
singular direction (probability 1 for a random start), σ1 ∈ [σ̃1, σ̃1 + b1]; usually the actual
error is much smaller, about b²/gap.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
MatVec = Callable[[Array], Array]


def one_at_a_time(fn: Callable[[Array], object]) -> Callable[[Array], object]:
    """``fn`` of one matrix that, when vmapped, loops over the batch (``lax.map``) instead of
    making one batched call.

    Why: jaxlib 0.10's CPU LAPACK kernels (SVD, eigh, …) split a batched call over XLA's intra-op
    thread pool and block the calling pool thread until every piece is done. When as many such
    calls run at once as the pool has threads (2 here: e.g. two vmapped Lanczos runs, or one
    next to another computation), every thread waits and none is left to do the pieces: a
    deadlock (README, "Known issue"). A call on one matrix always runs inline.
    """
    f = jax.custom_batching.custom_vmap(fn)

    @f.def_vmap
    def _rule(axis_size, in_batched, a):
        del axis_size
        out = jax.lax.map(f, a) if in_batched[0] else f(a)
        return out, jax.tree.map(lambda _: bool(in_batched[0]), out)

    return f


svd = one_at_a_time(lambda a: jnp.linalg.svd(a))
singular_values = one_at_a_time(lambda a: jnp.linalg.svd(a, compute_uv=False))


@flax.struct.dataclass
class SingularTriplets:
    """Top singular triplets of an operator, with explicit residual bounds.

    Attributes:
      values: [k] σ̃, descending.
      bounds: [k] b: some singular value of A lies within b of each σ̃ (see the module docstring).
      left: [k, m] unit ũ.
      right: [k, n] unit ṽ.
      iterations: [] steps taken.
      products: [] matrix-vector products (JVPs + VJPs), the residual check included.
      converged: [] whether the estimated residuals met the tolerance before ``max_iters``.
    """

    values: Array
    bounds: Array
    left: Array
    right: Array
    iterations: Array
    products: Array
    converged: Array


def linear_operator(f: Callable[[Array], Array], x: Array) -> tuple[MatVec, MatVec, int]:
    """The Jacobian of ``f`` at ``x`` as flat products (JVP, VJP) without materialising it.

    Args:
      f: a function of one array.
      x: the point.

    Returns:
      (matvec: [n] → [m], rmatvec: [m] → [n], m) with n = x.size, m = f(x).size.
    """
    y, jvp = jax.linearize(f, x)
    vjp = jax.linear_transpose(jvp, x)

    def matvec(v):
        return jvp(v.reshape(x.shape)).ravel()

    def rmatvec(u):
        return vjp(u.reshape(y.shape))[0].ravel()

    return matvec, rmatvec, y.size


def default_tol(dtype) -> float:
    """Relative residual tolerance: 1e-8 in float64, 100·eps (≈1.2e-5) in float32."""
    return max(1e-8, 100 * float(jnp.finfo(dtype).eps))


def _unit(x: Array) -> tuple[Array, Array]:
    norm = jnp.linalg.norm(x)
    return jnp.where(norm > 0, x / jnp.where(norm > 0, norm, 1), 0), norm


def _orthogonalise(x: Array, basis: Array) -> Array:
    """Remove the components of ``x`` along the rows of ``basis`` (zero rows are inert), twice."""
    for _ in range(2):
        x = x - basis.T @ (basis @ x)
    return x


def _residual_bounds(
    matvec: MatVec, rmatvec: MatVec, values: Array, left: Array, right: Array
) -> Array:
    r1 = jax.vmap(matvec)(right) - values[:, None] * left
    r2 = jax.vmap(rmatvec)(left) - values[:, None] * right
    return jnp.sqrt((jnp.sum(r1**2, -1) + jnp.sum(r2**2, -1)) / 2)


def lanczos_svd(
    matvec: MatVec,
    rmatvec: MatVec,
    n: int,
    *,
    key: Array,
    k: int = 1,
    max_iters: int = 100,
    tol: float | None = None,
    dtype=jnp.float32,
) -> SingularTriplets:
    """Top-``k`` singular triplets of A by Golub-Kahan-Lanczos with full reorthogonalisation.

    Traceable (``lax.while_loop``): jit it, or vmap it over operators built per example.

    Args:
      matvec: v [n] ↦ Av [m].
      rmatvec: u [m] ↦ Aᵀu [n].
      n: input dimension.
      key: PRNG key of the random start vector.
      k: number of triplets.
      max_iters: Lanczos steps at most (the basis holds max_iters + 1 vectors of each side).
      tol: stop when every estimated residual of the top k is ≤ tol · σ̃1 (default
        :func:`default_tol`).
      dtype: working dtype.

    Returns:
      :class:`SingularTriplets` (2 products per step plus 2k for the final residuals).
    """
    if not 1 <= k <= max_iters:
        raise ValueError(f"need 1 <= k <= max_iters, got k={k}, max_iters={max_iters}")
    tol = default_tol(dtype) if tol is None else tol
    m = jax.eval_shape(matvec, jax.ShapeDtypeStruct((n,), dtype)).shape[0]
    steps = max_iters
    v0, _ = _unit(jax.random.normal(key, (n,), dtype))

    def ritz(alpha, beta, j):
        """SVD of B_{j+1} zero-padded to len(alpha)² (the padding adds zero singular values)."""
        above = jnp.where(jnp.arange(alpha.shape[0] - 1) < j, beta[:-1], 0)
        return svd(jnp.diag(alpha) + jnp.diag(above, 1))

    # The convergence check needs only the top k Ritz values and the last row of P. An SVD of
    # the smallest leading block (from a ladder of static sizes) that holds B_{j+1} keeps the
    # check at O(j³) instead of O(max_iters³) per step.
    sizes = sorted({m for m in (8, 16, 32, 64, 128, 256, 512) if k <= m < steps} | {steps})

    def check(alpha, beta, j):
        def at(m):
            def branch(alpha, beta, j):
                p, s, _ = ritz(alpha[:m], beta[:m], j)
                return s[:k], p[j, :k]

            return branch

        branch = jnp.searchsorted(jnp.asarray(sizes), j + 1)
        return jax.lax.switch(branch, [at(m) for m in sizes], alpha, beta, j)

    def step(state):
        j, vs, us, alpha, beta, _ = state
        u = matvec(vs[j]) - jnp.where(j > 0, beta[j - 1], 0) * us[j - 1]
        u, a = _unit(_orthogonalise(u, us))
        us, alpha = us.at[j].set(u), alpha.at[j].set(a)
        v = rmatvec(u) - a * vs[j]
        v, b = _unit(_orthogonalise(v, vs))
        vs, beta = vs.at[j + 1].set(v), beta.at[j].set(b)
        s, last = check(alpha, beta, j)
        estimate = b * jnp.abs(last)  # β_j |e_jᵀ p_i|: the recurrence's residual
        done = (j + 1 >= k) & jnp.all(estimate <= tol * s[0])
        return j + 1, vs, us, alpha, beta, done

    state = (
        jnp.asarray(0),
        jnp.zeros((steps + 1, n), dtype).at[0].set(v0),
        jnp.zeros((steps, m), dtype),
        jnp.zeros((steps,), dtype),
        jnp.zeros((steps,), dtype),
        jnp.asarray(False),
    )
    j, vs, us, alpha, beta, done = jax.lax.while_loop(lambda s: (s[0] < steps) & ~s[5], step, state)
    p, s, qt = ritz(alpha, beta, j - 1)
    values = s[:k]
    left = jax.vmap(lambda c: _unit(c @ us)[0])(p[:, :k].T)
    right = jax.vmap(lambda c: _unit(c @ vs[:steps])[0])(qt[:k])
    bounds = _residual_bounds(matvec, rmatvec, values, left, right)
    return SingularTriplets(values, bounds, left, right, j, 2 * j + 2 * k, done)


def power_iteration(
    matvec: MatVec,
    rmatvec: MatVec,
    n: int,
    *,
    key: Array,
    max_iters: int = 1000,
    tol: float | None = None,
    dtype=jnp.float32,
) -> SingularTriplets:
    """σ1 of A by power iteration on AᵀA, for comparison with :func:`lanczos_svd`.

    Each step: u = Av/‖Av‖, σ̃ = ‖Av‖, w = Aᵀu. Av = σ̃u holds exactly, so the residual bound is
    ‖w − σ̃v‖/√2, free of extra products; the loop stops when it is ≤ tol · σ̃.

    Returns:
      :class:`SingularTriplets` with k = 1 (2 products per step).
    """
    tol = default_tol(dtype) if tol is None else tol
    v0, _ = _unit(jax.random.normal(key, (n,), dtype))

    def step(state):
        i, v, *_ = state
        u, s = _unit(matvec(v))
        w = rmatvec(u)
        bound = jnp.linalg.norm(w - s * v) / jnp.sqrt(2.0).astype(dtype)
        return i + 1, _unit(w)[0], u, v, s, bound

    zero = jnp.zeros((), dtype)
    m = jax.eval_shape(matvec, jax.ShapeDtypeStruct((n,), dtype)).shape[0]
    state = (jnp.asarray(0), v0, jnp.zeros((m,), dtype), v0, zero, jnp.asarray(jnp.inf, dtype))
    i, _, u, v, s, bound = jax.lax.while_loop(
        lambda st: (st[0] < max_iters) & (st[5] > tol * st[4]), step, state
    )
    return SingularTriplets(
        values=s[None],
        bounds=bound[None],
        left=u[None],
        right=v[None],
        iterations=i,
        products=2 * i,
        converged=bound <= tol * s,
    )
