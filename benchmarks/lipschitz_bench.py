"""Exact σmax of a DA layer's Jacobian: matrix-free Lanczos vs full Jacobian + SVD.

For tokens N and width D, the map is one Differential Attention layer u ↦ DA(u), u ∈ R^{N×D}
(random init, λ_init = 0.8, u ~ N(0, 1) like a LayerNorm output); its Jacobian is n × n with
n = N·D. Lanczos uses one JVP and one VJP per step (:func:`diffjax.analysis.lanczos_svd`); the
full method builds the Jacobian with jax.jacfwd (n JVPs) and takes an SVD (O(n³)). The SVD is
skipped above ``--max-svd-dim`` (memory n² and time n³); the Lanczos accuracy is then its residual
bound. Times exclude compilation (reported separately, approximately); Lanczos times are the best
of ``--repeats`` runs, the (10-100× longer) SVD times one run: this CPU is shared and noisy.

    python -m benchmarks.lipschitz_bench [--tokens 17 65 197] [--widths 64 192 768]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

import diffjax as dj
from diffjax import analysis as an

HEADS = {64: 4, 192: 6, 768: 12}  # softmax-baseline heads; DA uses half (ViT-Ti/-S/-B style)


def _timed(fn, *args, repeats=1):
    """(result, best wall time of ``repeats`` runs), compilation excluded."""
    # Parameters are arguments: closed-over constants would make XLA fold them at compile time.
    compiled = jax.jit(fn).lower(*args).compile()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench(tokens: int, width: int, args) -> dict:
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    heads = HEADS.get(width, max(2, width // 32))
    layer = dj.DiffAttention(width, heads, 0.8, rngs=nnx.Rngs(0))
    params = jax.tree.map(lambda p: p.astype(dtype), layer.params())
    u = jax.random.normal(jax.random.key(1), (tokens, width), dtype)
    n = u.size

    def f(params, x):
        return dj.diff_attention(params, x[None], heads, 0.8)[0]

    row = {"N": tokens, "D": width, "n": n}
    t0 = time.perf_counter()
    lz, row["lanczos_s"] = _timed(
        lambda p, x: an.top_singular_values(
            functools.partial(f, p),
            x,
            k=1,
            key=jax.random.key(2),
            max_iters=args.max_iters,
            tol=args.tol,
        ),
        params,
        u,
        repeats=args.repeats,
    )
    row["lanczos_compile_s"] = time.perf_counter() - t0 - args.repeats * row["lanczos_s"]
    row.update(
        sigma=float(lz.values[0]),
        products=int(lz.products),
        bound=float(lz.bounds[0]),
        converged=bool(lz.converged),
    )
    if n <= args.max_svd_dim:
        t0 = time.perf_counter()
        s, row["svd_s"] = _timed(
            lambda p, x: jnp.linalg.svd(
                an.jacobian_matrix(functools.partial(f, p), x), compute_uv=False
            )[0],
            params,
            u,
        )
        row["svd_compile_s"] = time.perf_counter() - t0 - row["svd_s"]
        row["svd_sigma"] = float(s)
        row["rel_error"] = abs(row["sigma"] - float(s)) / float(s)
        row["winner"] = "lanczos" if row["lanczos_s"] < row["svd_s"] else "svd"
    else:
        gib = n * n * jnp.dtype(dtype).itemsize / 2**30
        row["svd_skipped"] = f"n={n}: Jacobian {gib:.1f} GiB, SVD ~{n**3 / 1e12:.1f}e12 flop"
        row["winner"] = "lanczos (only)"
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[17, 65, 197])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 192, 768])
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--max-iters", type=int, default=100, help="Lanczos steps at most")
    p.add_argument("--tol", type=float, default=1e-10, help="Lanczos relative residual tolerance")
    p.add_argument("--max-svd-dim", type=int, default=5000, help="largest n = N·D for the full SVD")
    p.add_argument(
        "--repeats", type=int, default=3, help="Lanczos time = best of this many runs (SVD: one)"
    )
    args = p.parse_args(argv)
    print(f"devices: {jax.devices()}  dtype: {args.dtype}")
    header = (
        "| N | D | n = N·D | Lanczos s (compile) | products | residual bound | "
        "Jacobian+SVD s (compile) | rel. error vs SVD | faster |"
    )
    print(header)
    print("|" + "---|" * 9)
    with jax.enable_x64(args.dtype == "float64"):
        for tokens in args.tokens:
            for width in args.widths:
                r = bench(tokens, width, args)
                svd = (
                    f"{r['svd_s']:.3g} ({r['svd_compile_s']:.2g})"
                    if "svd_s" in r
                    else f"skipped: {r['svd_skipped']}"
                )
                err = f"{r['rel_error']:.1e}" if "rel_error" in r else "—"
                conv = "" if r["converged"] else " (not converged)"
                print(
                    f"| {tokens} | {width} | {r['n']} | {r['lanczos_s']:.3g} "
                    f"({r['lanczos_compile_s']:.2g}) | {r['products']}{conv} | "
                    f"{r['bound']:.1e} | {svd} | {err} | {r['winner']} |",
                    flush=True,
                )
    print(
        f"Lanczos tol {args.tol:g} (relative residual); some σ of J lies within the residual bound "
        "of σ̃; the reference is the SVD of the jacfwd Jacobian."
    )


if __name__ == "__main__":
    main()
