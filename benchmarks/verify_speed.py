"""Certified radius and time per image of diffjax.verify, per method, depth, model and norm.

    python -m benchmarks.verify_speed --depths 1 2 --methods crown-ibp crown --images 4

Models: width 32, 4 heads, image 32 px with patch 8 (17 tokens), random-initialised (seed 0,
q/k weights scaled ×8 so that the attention maps are not uniform), float64, ViT and DiffViT;
images: the first CIFAR-10 test images of the embedded sample, labelled with the model's own
prediction (so that the radius is that of the model's decision). Per configuration: the median
certified radius (bisection on [0, --hi], --steps halvings) and seconds per image, cold (first
call: tracing and compilation included) and warm (a second call). Writes a JSON list to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--attention", nargs="+", default=["softmax", "diff"],
                   choices=["softmax", "diff"])  # fmt: skip
    p.add_argument("--methods", nargs="+", default=["ibp", "crown-ibp", "crown", "alpha-crown"])
    p.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--hi-linf", type=float, default=0.05)
    p.add_argument("--hi-l2", type=float, default=0.5)
    p.add_argument("--out", default="results/verify/speed.json")
    args = p.parse_args(argv)
    if args.images < 1 or args.steps < 1:
        p.error("--images and --steps must be positive")
    return args


def table(result: dict) -> str:
    """The Markdown table of a results file (what docs/verify.md quotes)."""
    lines = [
        f"Device: {result['meta']['device']}; XLA_FLAGS: `{result['meta']['xla_flags']}`.",
        "",
        "| model | depth | norm | method | images | median radius | cold s/img | warm s/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        model = "ViT" if r["attention"] == "softmax" else "DiffViT"
        lines.append(f"| {model} | {r['depth']} | {r['norm']} | {r['method']} | {r['images']} | "
                     f"{r['median_radius']:.2e} | {r['cold_s_per_image']:.1f} | "
                     f"{r['warm_s_per_image']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import diffjax as dj
    from diffjax import verify
    from diffjax.analysis import with_dtype
    from diffjax.data.embedded import embedded_sample

    jax.config.update("jax_enable_x64", True)
    data = embedded_sample("test")
    images = jnp.asarray(np.asarray(data.images[: args.images]), jnp.float64) / 255.0
    rows = []
    for attention in args.attention:
        for depth in args.depths:
            config = dj.ViTConfig(image_size=32, patch_size=8, width=32, depth=depth,
                                  num_heads=4, attention=attention)  # fmt: skip
            model = dj.ViT(config, rngs=nnx.Rngs(0))
            for blk in model.blocks:
                for name in ("q", "k"):
                    lin = getattr(blk.attn, name)
                    lin.kernel[...] = lin.kernel[...] * 8.0
            model = with_dtype(model, "float64")
            labels = jnp.argmax(model(images), -1)
            for norm in args.norms:
                hi = args.hi_linf if norm == "linf" else args.hi_l2
                for method in args.methods:
                    times = []
                    for _ in range(2):
                        start = time.perf_counter()
                        radii = verify.certified_radius(model, images, labels, norm, method,
                                                        hi=hi, steps=args.steps)  # fmt: skip
                        radii.block_until_ready()
                        times.append((time.perf_counter() - start) / args.images)
                    row = dict(attention=attention, depth=depth, norm=norm, method=method,
                               median_radius=float(np.median(np.asarray(radii))),
                               radii=np.asarray(radii).tolist(), cold_s_per_image=times[0],
                               warm_s_per_image=times[1], images=args.images,
                               steps=args.steps, hi=hi)  # fmt: skip
                    rows.append(row)
                    label = f"{attention:7s} depth {depth} {norm:4s} {method:11s}"
                    speed = f"cold {times[0]:.2f} s/img  warm {times[1]:.3f} s/img"
                    print(f"{label} median radius {row['median_radius']:.3e}  {speed}", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    meta = dict(device=str(jax.devices()[0]), platform=platform.platform(),
                xla_flags=os.environ.get("XLA_FLAGS", ""))  # fmt: skip
    result = {"meta": meta, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))


if __name__ == "__main__":
    main()
