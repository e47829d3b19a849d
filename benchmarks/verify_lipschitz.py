"""Certified Lipschitz bounds over a ball: bound propagation through the JVP (diffjax.verify)
vs the interval certifier (diffjax.analysis.certified), each ÷ the adversarial maximum.

Models: the ``tiny`` preset (8×8 images, 5 tokens, width 16; q/k kernels ×``--qk-scale`` so that
attention is far from uniform), float64, random init, depth 1 and 2, ViT and DiffViT. For each
radius r of B_p(x0, r):

* ``layer``: the last layer's attention map u ↦ Attn(u) at u0 = LN1(h) of a random image;
  ℓ2: σmax(J), ℓ∞: ‖J‖_{∞→∞} (the interval certifier's ℓ∞ value is the row sums of its
  enclosure's magnitudes);
* ``net``: the margin gradient ‖∇(z_c − z_j)‖_q of the runner-up class j over the image ball
  (∩ [0, 1]^d for verify; the interval certifier bounds the larger unclipped ball).

``adv`` is the largest value Adam with restarts finds in the ball
(:func:`diffjax.verify.lipschitz.adversarial_max`), a lower bound of the supremum; a ratio
bound ÷ adv ≥ 1 is the tightness (the true supremum lies in [adv, bound]).

    python -m benchmarks.verify_lipschitz [--depths 1 2] [--radii 1e-3 1e-2] [--out results/..]
"""

from __future__ import annotations

import argparse
import json
import pathlib


def _model(attention: str, depth: int, scale: float):
    from flax import nnx

    import diffjax as dj
    from diffjax import analysis as an

    model = dj.ViT(dj.preset("tiny", attention=attention, depth=depth), rngs=nnx.Rngs(0))
    for blk in model.blocks:
        for name in ("q", "k"):
            lin = getattr(blk.attn, name)
            lin.kernel[...] = lin.kernel[...] * scale
    return an.with_dtype(model, "float64")


def bench(attention: str, depth: int, args, save) -> None:
    """One model's rows, each handed to ``save`` as soon as it is measured."""
    import functools

    import jax
    import jax.numpy as jnp

    from diffjax import analysis as an
    from diffjax import verify
    from diffjax.analysis import certified as C

    model = _model(attention, depth, args.qk_scale)
    image = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3), jnp.float64)
    layer = depth - 1
    u0 = an.layer_input(model, image, layer, "attention_input")
    logits = model(image)[0]
    label = int(jnp.argmax(logits))
    runner = int(jnp.argsort(logits)[-2])
    key = jax.random.key(args.seed)

    def layer_norm_of(u, norm):
        jac = jax.jacfwd(functools.partial(an.attention_layer, model, layer=layer))(u)
        jac = jac.reshape(u.size, u.size)
        return jnp.linalg.norm(jac, 2) if norm == "l2" else jnp.max(jnp.sum(jnp.abs(jac), 1))

    def gradient_norm(x, norm):
        grad = jax.grad(lambda z: (lambda o: o[label] - o[runner])(model(z[None])[0]))(x)
        return jnp.sum(jnp.abs(grad)) if norm == "linf" else jnp.linalg.norm(grad)

    def row(kind, norm, r, bound, interval, adv):
        save(dict(attention=attention, depth=depth, map=kind, norm=norm, radius=r,
                  verify=float(bound), interval=float(interval), adv=float(adv)))  # fmt: skip

    for norm in args.norms:
        for r in args.radii:
            lip = verify.attention_lipschitz_bound(model, layer, u0, r, norm, args.method)
            jac = C.jacobian_bounds(C.attention_program(model, layer), C.Ball(u0[0], r, norm))
            if norm == "l2":
                interval = C.lipschitz_upper(jac.jacobian)
            else:
                interval = jnp.max(jnp.sum(jac.jacobian.mag, 1))
            adv = verify.lipschitz.adversarial_max(functools.partial(layer_norm_of, norm=norm),
                                                   u0[0], r, norm, False, key)  # fmt: skip
            row("layer", norm, r, lip[0], interval, adv)
            if not args.network:
                continue
            grad = verify.margin_gradient_bounds(model, image, jnp.asarray([label]), r, norm,
                                                 args.method)  # fmt: skip
            net = C.jacobian_bounds(C.logits_program(model, label), C.Ball(image[0], r, norm))
            mag = net.jacobian.mag[runner]
            interval = jnp.sum(mag) if norm == "linf" else jnp.linalg.norm(mag)
            adv = verify.lipschitz.adversarial_max(functools.partial(gradient_norm, norm=norm),
                                                   image[0], r, norm, True, key)  # fmt: skip
            row("net", norm, r, grad[0, runner], interval, adv)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--attention", nargs="+", default=["softmax", "diff"])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    p.add_argument("--norms", nargs="+", default=["l2", "linf"])
    p.add_argument("--radii", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    p.add_argument("--method", default="crown-ibp", help="verify's bound propagation method")
    p.add_argument(
        "--network", action="store_true", help="also the whole network's margin gradient"
    )
    p.add_argument("--qk-scale", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=3, help="the adversary's PRNG key")
    p.add_argument("--out", type=pathlib.Path, help="write the rows as JSON here")
    args = p.parse_args(argv)

    import jax

    rows = []

    def save(row):
        """Print the row, and rewrite the results file with every row so far."""
        rows.append(row)
        print(f"| {row['attention']} | {row['depth']} | {row['map']} | {row['norm']} "
              f"| {row['radius']:g} | {row['adv']:.4g} | {row['verify'] / row['adv']:.3g} "
              f"| {row['interval'] / row['adv']:.3g} |", flush=True)  # fmt: skip
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"method": args.method, "rows": rows}, indent=1) + "\n"
            args.out.write_text(text)

    print(f"method {args.method}; ratio = bound ÷ adversarial maximum (≥ 1; 1 is exact)")
    print("| model | depth | map | norm | radius | adv. max | verify ÷ adv | interval ÷ adv |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    with jax.enable_x64():
        for depth in args.depths:
            for attention in args.attention:
                bench(attention, depth, args, save)


if __name__ == "__main__":
    main()
