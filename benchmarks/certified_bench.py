"""Certified local Lipschitz bound L̂(u0, r) of one attention layer: time and tightness.

The map is layer 0's attention u ↦ Attn(u) of a float64 ViT / DiffViT (random init, q/k weights
as initialised), at u0 = LN1(h_0) of a random image. For each radius r of the ball B_p(u0, r)
(ℓ2 or ℓ∞ over all N·D entries) it reports

* ``bound_s``: wall time of the interval Jacobian (compilation excluded) and of the two SVDs;
* ``lhat``: the certified bound ‖M‖₂ + ‖R‖₂ (:mod:`diffjax.analysis.certified`);
* ``pgd``: the largest σmax(J(u)) that PGD with Lanczos inside found in the ball (a lower bound
  on the supremum), and ``point``: σmax(J(u0)).

lhat / pgd is the tightness: the true supremum lies in [pgd, lhat].

    python -m benchmarks.certified_bench [--configs 32:64:4 16:192:6] [--radii 1e-3 1e-2]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

import diffjax as dj
from diffjax import analysis as an
from diffjax.analysis import certified as C


def _timed(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - t0


def bench(image_size: int, width: int, heads: int, attention: str, args) -> list[dict]:
    config = dj.variant(
        "Nano/4", image_size=image_size, width=width, num_heads=heads, depth=1, attention=attention
    )
    model = an.with_dtype(dj.ViT(config, rngs=nnx.Rngs(0)), "float64")
    image = jax.random.uniform(jax.random.key(1), (image_size, image_size, 3), jnp.float64)
    u0 = an.layer_input(model, image[None], 0, "attention_input")[0]
    f = functools.partial(an.attention_layer, model, layer=0)
    program = C.attention_program(model, 0)
    point = float(an.exact_local_lipschitz(f, u0, method="lanczos", key=jax.random.key(2)).value)
    rows = []
    for norm in args.norms:
        for r in args.radii:
            bounds, t_bounds = _timed(
                lambda c, rr, norm=norm: C.jacobian_bounds(
                    program, C.Ball(c, rr, norm), chunk=args.chunk
                ),
                u0,
                jnp.asarray(r),
            )
            t0 = time.perf_counter()
            lhat = float(C.lipschitz_upper(bounds.jacobian))
            t_svd = time.perf_counter() - t0
            pgd = jax.jit(
                lambda c, rr, norm=norm: C.max_sigma_pgd(
                    f, c, rr, norm, steps=args.steps, key=jax.random.key(3)
                )[0]
            )(u0, jnp.asarray(r))
            rows.append(
                {
                    "attention": attention,
                    "N": config.num_tokens,
                    "D": width,
                    "n": int(u0.size),
                    "norm": norm,
                    "radius": r,
                    "point": point,
                    "pgd": float(pgd),
                    "lhat": lhat,
                    "lhat_over_pgd": lhat / float(pgd),
                    "bound_s": t_bounds,
                    "svd_s": t_svd,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["32:64:4", "16:192:6"],
                   help="IMAGE:WIDTH:HEADS (patch 4; tokens = (IMAGE/4)² + 1)")  # fmt: skip
    p.add_argument("--radii", nargs="+", type=float, default=[1e-3, 1e-2])
    p.add_argument("--norms", nargs="+", default=["l2", "linf"], choices=C.NORMS)
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the σmax ascent")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = []
    with jax.enable_x64(True):
        for spec in args.configs:
            image, width, heads = (int(v) for v in spec.split(":"))
            for attention in ("softmax", "diff"):
                rows += bench(image, width, heads, attention, args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
