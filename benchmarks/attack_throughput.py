"""Attack throughput against a bare forward+backward of the same model (ViT and DiffViT).

    python -m benchmarks.attack_throughput --batch 32 --width 64 --depth 2 --steps 10

Prints, per model and attack, images attacked per second, the model calls each image needed,
and the time per model call relative to the bare batched gradient (a forward counts as the
measured forward time): the attack's loop overhead. The first call of every function is a
compile and is not timed; each timing is the fastest of ``--repeats`` interleaved runs (the
least disturbed by other load).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import diffjax as dj
from diffjax import attacks
from diffjax.attacks import losses


def best_times(fns: dict, repeats: int) -> dict:
    """The fastest of ``repeats`` timed calls of each function, interleaved so that load from
    other processes hits all of them alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile
    times = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--image-size", type=int, default=32, help="CIFAR: 32")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=64, help="token width (cifar preset: 192)")
    parser.add_argument("--depth", type=int, default=2, help="blocks (cifar preset: 6)")
    parser.add_argument("--heads", type=int, default=4, help="softmax heads (DiffViT: half)")
    parser.add_argument("--steps", type=int, default=10, help="PGD/APGD steps, CW iterations")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    base = dj.preset(
        "cifar",
        image_size=args.image_size,
        patch_size=args.patch_size,
        width=args.width,
        depth=args.depth,
        num_heads=args.heads,
    )
    key = jax.random.key(args.seed)
    images = jax.random.uniform(key, (args.batch, args.image_size, args.image_size, 3))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (args.batch,), 0, 10)
    eps = 4 / 255
    cw = attacks.CWConfig(binary_search_steps=1, max_iterations=args.steps, abort_early=False)
    # (name, attack, config, model calls that are plain forwards: the clean image, PGD's last
    # iterate; all other calls are forward+backward)
    attack_list = [
        ("pgd-linf", attacks.pgd, attacks.PGDConfig(eps, steps=args.steps), 2),
        ("pgd-l2", attacks.pgd, attacks.PGDConfig(0.5, norm="l2", steps=args.steps), 2),
        ("apgd-ce", attacks.apgd, attacks.APGDConfig(eps, steps=args.steps), 1),
        ("cw-l2", attacks.cw_l2, cw, 1),
    ]
    forward = jax.jit(lambda f, x: f(x))
    grad = jax.jit(lambda f, x, y: jax.grad(lambda z: jnp.sum(losses.cross_entropy(f(z), y)))(x))
    print(f"devices: {jax.devices()}")
    print(
        f"batch {args.batch}, {args.image_size}x{args.image_size}, width {args.width}, "
        f"depth {args.depth}, heads {args.heads}, {args.steps} steps\n"
    )
    header = f"{'model':8s} {'attack':9s} {'images/s':>10s} {'calls/img':>9s} {'ratio':>7s}"
    print(header + "   (ratio = time / (calls x bare time per call); 1.00 = no overhead)")
    print("-" * len(header))
    for attention in ("softmax", "diff"):
        name = "ViT" if attention == "softmax" else "DiffViT"
        model = dj.ViT(base.replace(attention=attention), rngs=nnx.Rngs(args.seed))
        model_fn = attacks.model_function(model)

        fns = {
            "fwd": lambda f=model_fn: forward(f, images),
            "fwd+bwd": lambda f=model_fn: grad(f, images, labels),
        }
        calls = {"fwd": 1, "fwd+bwd": 1}
        plain = {"fwd": 1, "fwd+bwd": 0}
        for attack_name, attack, config, forwards in attack_list:
            fns[attack_name] = lambda f=model_fn, a=attack, c=config: a(f, images, labels, key, c)
            calls[attack_name] = int(np.max(fns[attack_name]().model_calls))
            plain[attack_name] = forwards
        times = best_times(fns, args.repeats)
        for fn_name, t in times.items():
            forwards = plain[fn_name]
            expected = forwards * times["fwd"] + (calls[fn_name] - forwards) * times["fwd+bwd"]
            print(
                f"{name:8s} {fn_name:9s} {args.batch / t:10.1f} {calls[fn_name]:9d} "
                f"{t / expected:7.2f}"
            )


if __name__ == "__main__":
    main()
