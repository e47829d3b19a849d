"""Per-branch Jacobians of attention maps: J1 = ∂A1/∂z, J2 = ∂A2/∂z, J_DA = ∂(A1 − λA2)/∂z.

z is the input named by ``wrt`` (the image, the block input h_l or the attention input LN1(h_l);
see :mod:`diffjax.analysis.functions`). λ is a parameter, so J_DA = J1 − λJ2; J_DA is nevertheless
differentiated on its own (through ``AttentionMaps.combined``): Lemma 1 is checked, not assumed.

Standard (softmax) attention has one map per head. Its "branches" pair heads (2h, 2h+1), exactly as
DA pairs its q/k sub-heads (2h, 2h+1) into DIFF head h: A1 := A_{2h}, A2 := A_{2h+1}. There is no λ,
so ``combined`` is ``None`` and only cos θ and ρ are defined. A parameter-matched ViT therefore has
as many pairs as the DiffViT has DIFF heads.

What is differentiated can be restricted, so that nothing that was not asked for is materialised:

* ``head``: one DIFF head (one head pair for softmax attention); default all heads;
* ``row``: one query row (0 = CLS); default all rows;
* ``projection``: a fixed weight w with the selected map's shape [H', R', N]; each branch becomes
  the scalar ⟨w, A_i⟩ and its Jacobian a gradient.

Branch outputs always have shape [H', R', K] (H' = 1 when ``head`` is given, R' = 1 when ``row`` is
given, K = N keys) or [1, 1, 1] with a projection. Three forms are offered:

* :func:`branch_jvp` / :func:`branch_vjp`: matrix-free products with the three Jacobians;
* :func:`branch_grams`: the exact Frobenius inner products ‖J1‖², ‖J2‖², ⟨J1, J2⟩, ‖J_DA‖² per
  (head, row) from JVPs over the input basis or VJPs over the output basis, whichever is fewer, in
  chunks: memory O(chunk · size of one product), never a whole Jacobian;
* :func:`branch_jacobians`: the materialised Jacobians [B, H', R', K, *z] (small cases, tests).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from diffjax.analysis.functions import Wrt, attention_maps
from diffjax.vit import ViT

Array = jax.Array
Mode = Literal["auto", "fwd", "rev"]


@flax.struct.dataclass
class Branches:
    """Per-branch quantities of one attention layer, each with the same layout.

    Attributes:
      first: the A1 branch (DA) or even heads (softmax attention).
      second: the A2 branch (DA) or odd heads.
      combined: A1 − λA2, differentiated on its own (DA); ``None`` for softmax attention.
      lam: the layer's λ [] (DA) or ``None``.
    """

    first: Array
    second: Array
    combined: Array | None
    lam: Array | None


@flax.struct.dataclass
class Gram:
    """Exact Frobenius inner products of the branch Jacobians, per group [..., H', R'].

    Attributes:
      g11: ‖J1‖²_F.
      g22: ‖J2‖²_F.
      g12: ⟨J1, J2⟩_F.
      gda: ‖J_DA‖²_F, from the combined map (NaN for softmax attention).
      lam: λ [...] (NaN for softmax attention).
    """

    g11: Array
    g22: Array
    g12: Array
    gda: Array
    lam: Array


def _select(a: Array, head: int | None, row: int | None) -> Array:
    a = a if head is None else a[head : head + 1]
    return a if row is None else a[:, row : row + 1]


def branch_outputs(
    model: ViT,
    z: Array,
    layer: int,
    *,
    wrt: Wrt = "image",
    head: int | None = None,
    row: int | None = None,
    projection: Array | None = None,
) -> Branches:
    """The selected branch maps of layer ``layer`` for one unbatched input ``z``.

    Args:
      z: one example of the input named by ``wrt``.
      head: DIFF head (or softmax head pair) index, or ``None`` for all.
      row: query row (0 = CLS), or ``None`` for all.
      projection: optional weight [H', R', N]; the branches become ⟨w, A_i⟩.

    Returns:
      :class:`Branches` with arrays [H', R', N] ([1, 1, 1] with a projection).
    """
    maps = attention_maps(model, z, layer, wrt)
    heads, n = maps.a1.shape[0], maps.a1.shape[-1]
    if maps.a2 is None:
        if heads % 2:
            raise ValueError(f"pairing softmax heads (2h, 2h+1) needs an even head count: {heads}")
        first, second, combined, lam = maps.a1[0::2], maps.a1[1::2], None, None
    else:
        first, second, combined, lam = maps.a1, maps.a2, maps.combined, maps.lam
    pairs = first.shape[0]
    if head is not None and not 0 <= head < pairs:
        raise ValueError(f"head {head} outside 0..{pairs - 1}")
    if row is not None and not 0 <= row < n:
        raise ValueError(f"row {row} outside 0..{n - 1}")
    sel = functools.partial(_select, head=head, row=row)
    out = [sel(first), sel(second), None if combined is None else sel(combined)]
    if projection is not None:
        if projection.shape != out[0].shape:
            raise ValueError(
                f"projection must have the selected map's shape {out[0].shape}, "
                f"got {projection.shape}"
            )
        out = [None if a is None else jnp.sum(projection * a).reshape(1, 1, 1) for a in out]
    return Branches(first=out[0], second=out[1], combined=out[2], lam=lam)


def branch_jvp(model: ViT, z: Array, v: Array, layer: int, **select) -> tuple[Branches, Branches]:
    """Branch outputs at ``z`` and their directional derivatives J·v (one example).

    Args:
      v: tangent with ``z``'s shape and dtype.
      select: ``wrt``, ``head``, ``row``, ``projection`` as in :func:`branch_outputs`.

    Returns:
      (outputs, tangents), both :class:`Branches` ([H', R', N] arrays); tangents.lam is 0.
    """
    return jax.jvp(lambda x: branch_outputs(model, x, layer, **select), (z,), (v,))


def branch_vjp(model: ViT, z: Array, cotangent: Branches, layer: int, **select) -> Array:
    """Jᵀ·c for a cotangent on the branch outputs: J1ᵀc1 + J2ᵀc2 + J_DAᵀc_DA (one example).

    Args:
      cotangent: :class:`Branches` shaped like the outputs (``lam`` must be zero or ``None``-like;
        it is ignored because λ does not depend on ``z``).

    Returns:
      the input cotangent, shaped like ``z``.
    """
    out, vjp = jax.vjp(lambda x: branch_outputs(model, x, layer, **select), z)
    cotangent = cotangent.replace(lam=None if out.lam is None else jnp.zeros_like(out.lam))
    return vjp(cotangent)[0]


def _stacked(b: Branches) -> Array:
    """[3, H', R', K]: first, second, combined (zeros for softmax attention)."""
    combined = jnp.zeros_like(b.first) if b.combined is None else b.combined
    return jnp.stack([b.first, b.second, combined])


def _gram_parts(t: Array) -> Array:
    """Per output element, the four Gram summands of tangents t [..., 3, *out] → [..., 4, *out]."""
    t1, t2, tda = t[..., 0, :, :, :], t[..., 1, :, :, :], t[..., 2, :, :, :]
    return jnp.stack([t1**2, t2**2, t1 * t2, tda**2], axis=-4)


def _gram_forward(f, z: Array, chunk: int) -> Array:
    """Σ over input basis vectors e_i of the Gram summands of J e_i: [4, H', R', K]."""
    y, jvp = jax.linearize(f, z)
    n_in = z.size

    def body(c, acc):
        # one_hot of an index ≥ n_in is all zeros: the padded tail of the last chunk adds nothing.
        basis = jax.nn.one_hot(c * chunk + jnp.arange(chunk), n_in, dtype=z.dtype)
        t = jax.vmap(jvp)(basis.reshape(chunk, *z.shape))
        return acc + jnp.sum(_gram_parts(t), axis=0)

    acc = jnp.zeros((4, *y.shape[1:]), y.dtype)
    return jax.lax.fori_loop(0, -(-n_in // chunk), body, acc)


def _gram_reverse(f, z: Array, chunk: int) -> Array:
    """Σ over output elements o of the Gram summands of the rows J[o, :]: [4, H', R', K]."""
    y, vjp = jax.vjp(f, z)
    n_out = math.prod(y.shape[1:])
    n_chunks = -(-n_out // chunk)

    def rows(c):
        o = c * chunk + jnp.arange(chunk)
        # Cotangents e_{b,o} for the three outputs b; one_hot past n_out is zero.
        basis = jax.nn.one_hot(o, n_out, dtype=y.dtype).reshape(chunk, *y.shape[1:])
        cot = jnp.einsum("bc,o...->obc...", jnp.eye(3, dtype=y.dtype), basis)
        g = jax.vmap(vjp)(cot.reshape(chunk * 3, *y.shape))[0].reshape(chunk, 3, -1)
        return jnp.stack(
            [
                jnp.sum(g[:, 0] ** 2, -1),
                jnp.sum(g[:, 1] ** 2, -1),
                jnp.sum(g[:, 0] * g[:, 1], -1),
                jnp.sum(g[:, 2] ** 2, -1),
            ],
            axis=-1,
        )

    parts = jax.lax.map(rows, jnp.arange(n_chunks)).reshape(n_chunks * chunk, 4)[:n_out]
    return parts.T.reshape(4, *y.shape[1:])


def choose_mode(n_in: int, n_out: int) -> Literal["fwd", "rev"]:
    """Forward (JVPs over the n_in inputs) or reverse (3 VJPs per each of n_out outputs)."""
    return "fwd" if n_in <= 3 * n_out else "rev"


@functools.partial(jax.jit, static_argnames=("layer", "wrt", "head", "row", "mode", "chunk"))
def branch_grams(
    model: ViT,
    zs: Array,
    layer: int,
    *,
    wrt: Wrt = "image",
    head: int | None = None,
    row: int | None = None,
    projection: Array | None = None,
    mode: Mode = "auto",
    chunk: int = 64,
) -> Gram:
    """Exact ‖J1‖², ‖J2‖², ⟨J1, J2⟩, ‖J_DA‖² per example, head and row, without materialising J.

    Args:
      zs: [B, ...] a batch of inputs named by ``wrt`` (see :func:`layer_input`).
      mode: ``"fwd"`` (z.size JVPs), ``"rev"`` (3 × outputs VJPs) or ``"auto"`` (fewer products).
      chunk: products evaluated together (memory ∝ chunk).

    Returns:
      :class:`Gram` with arrays [B, H', R'].
    """
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    select = dict(wrt=wrt, head=head, row=row, projection=projection)

    def one(z):
        f = lambda x: _stacked(branch_outputs(model, x, layer, **select))  # noqa: E731
        n_out = math.prod(jax.eval_shape(f, z).shape[1:])
        m = choose_mode(z.size, n_out) if mode == "auto" else mode
        return jnp.sum((_gram_forward if m == "fwd" else _gram_reverse)(f, z, chunk), axis=-1)

    sums = jax.vmap(one)(zs)
    g11, g22, g12, gda = (sums[:, i] for i in range(4))
    # λ is a parameter: the same for every example.
    lam = branch_outputs(model, zs[0], layer, **select).lam
    if lam is None:
        gda, lam = jnp.full_like(gda, jnp.nan), jnp.nan
    lam = jnp.broadcast_to(jnp.asarray(lam, gda.dtype), gda.shape)
    return Gram(g11=g11, g22=g22, g12=g12, gda=gda, lam=lam)


@functools.partial(jax.jit, static_argnames=("layer", "wrt", "head", "row", "mode"))
def branch_jacobians(
    model: ViT,
    zs: Array,
    layer: int,
    *,
    wrt: Wrt = "image",
    head: int | None = None,
    row: int | None = None,
    projection: Array | None = None,
    mode: Literal["fwd", "rev"] = "rev",
) -> Branches:
    """Materialised branch Jacobians, vmapped over examples.

    Args:
      zs: [B, ...] a batch of inputs named by ``wrt``.
      mode: ``jax.jacrev`` (``"rev"``) or ``jax.jacfwd`` (``"fwd"``).

    Returns:
      :class:`Branches` with first/second/combined [B, H', R', K, *z.shape] and lam [B].
    """
    if mode not in ("fwd", "rev"):
        raise ValueError(f"mode must be 'fwd' or 'rev', got {mode!r}")
    jac = jax.jacrev if mode == "rev" else jax.jacfwd
    select = dict(wrt=wrt, head=head, row=row, projection=projection)

    def one(z):
        j = jac(lambda x: branch_outputs(model, x, layer, **select))(z)
        return j.replace(lam=branch_outputs(model, z, layer, **select).lam)

    return jax.vmap(one)(zs)
