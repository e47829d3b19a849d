"""Train-step throughput (images/s) of ViT and DiffViT at a training recipe.

    python -m benchmarks.train_step --preset cpu --steps 20

Times the jitted, data-parallel train step of ``diffjax.train`` on random CIFAR-shaped batches
(compilation excluded) on all local devices and prints a table with the implied time per epoch
of 50,000 images and per run of the preset's epochs.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
from flax import nnx

from diffjax import sharding
from diffjax.data import synthetic
from diffjax.experiments.configs import recipes
from diffjax.train import fit_to_data, init_state, train_step
from diffjax.vit import ViT, count_params


def measure(config, steps: int, repeats: int) -> tuple[float, float, float]:
    """Best-of-``repeats`` img/s (wall clock and per CPU-second) and the compile time (s).

    On a shared machine the wall-clock rate depends on the load; images per CPU-second of this
    process does much less, and times the core count bounds the rate on an idle machine.
    """
    mesh = sharding.data_mesh()
    spe = 50_000 // config.batch_size
    state = sharding.replicate(init_state(config=config, steps_per_epoch=spe), mesh)
    data = synthetic(config.batch_size, image_size=config.model.image_size, seed=0)
    images, labels = sharding.shard_batch((data.images, data.labels), mesh)
    t = time.perf_counter()
    state, m = train_step(state, images, labels, config=config, steps_per_epoch=spe)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    best, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state, m = train_step(state, images, labels, config=config, steps_per_epoch=spe)
        jax.block_until_ready((state, m))
        best = max(best, steps * config.batch_size / (time.perf_counter() - t))
        best_cpu = max(best_cpu, steps * config.batch_size / (time.process_time() - c))
    return best, best_cpu, compile_s


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(recipes.RECIPES), default="cpu",
                   help="a training recipe of experiments/configs/recipes.py")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (best is reported)")
    p.add_argument("--width", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--heads", type=int)
    args = p.parse_args(argv)
    print(
        f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"| model | params | img/s | img per CPU-s | compile s | min / 50k epoch | "
        f"min / {args.preset} run |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, attention in (("ViT", "softmax"), ("DiffViT", "diff")):
        config = recipes.train_config(recipes.training(args.preset))
        config = config.replace(model=config.model.replace(attention=attention))
        changes = {
            k: v
            for k, v in (("width", args.width), ("depth", args.depth), ("num_heads", args.heads))
            if v is not None
        }
        config = config.replace(model=config.model.replace(**changes))
        config = fit_to_data(config, synthetic(1, image_size=32))
        n = count_params(nnx.eval_shape(lambda c=config: ViT(c.model, rngs=nnx.Rngs(0))))
        ips, cpu_ips, compile_s = measure(config, args.steps, args.repeats)
        epoch_min = 50_000 / ips / 60
        print(
            f"| {name} | {n:,} | {ips:.0f} | {cpu_ips:.0f} | {compile_s:.1f} | "
            f"{epoch_min:.1f} | {epoch_min * config.epochs:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
