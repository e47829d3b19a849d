"""Train-step throughput (images/s) of ViT and DiffViT at a training recipe.

    python -m benchmarks.train_step --preset cpu --steps 20
    python -m benchmarks.train_step --preset cpu --feeding 8   # + host-fed against resident

Times the jitted, data-parallel train step of ``diffjax.train`` on random CIFAR-shaped batches
(compilation excluded) on all local devices and prints a table with the implied time per epoch
of 50,000 images and per run of the preset's epochs.

With ``--feeding K`` it then compares the two ways :func:`diffjax.train.train` feeds a step, as
its loop does, on a synthetic training set of ``--examples`` images: host-fed (each batch cut
from the epoch's permutation on the host and copied to the devices, :func:`train_step`) against
resident (the set on the devices once, the batch gathered in the step,
:func:`resident_train_step`), K interleaved rounds of ``--steps`` steps each; it prints img/s of
both, the median (range) of the per-round ratio resident ÷ host-fed, and what feeding alone
costs the host per step (cutting the batch, copying it to the devices).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
from flax import nnx

from diffjax import sharding
from diffjax.data import synthetic
from diffjax.data.pipeline import epoch_permutation, train_batches
from diffjax.experiments.configs import recipes
from diffjax.train import fit_to_data, init_state, resident_train_step, train_step
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


def compare_feeding(config, examples: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Per-round img/s of the host-fed and the resident step (``rounds`` interleaved rounds),
    and ``feed_ms``: [the host-fed path's feeding alone, ms per step]."""
    mesh = sharding.data_mesh()
    data = synthetic(examples, image_size=config.model.image_size, seed=0)
    spe = examples // config.batch_size
    rows = sharding.process_rows(config.batch_size, mesh)
    batches = train_batches(data, config.batch_size, config.seed, 0, rows)
    resident = sharding.replicate_host((data.images, data.labels), mesh)
    perm = epoch_permutation(examples, config.seed, 0)[: spe * config.batch_size]
    order = sharding.replicate_host(perm.astype("int32"), mesh)
    start = jax.device_get(init_state(config=config, steps_per_epoch=spe))
    states = {"host": sharding.replicate(start, mesh), "resident": sharding.replicate(start, mesh)}

    def host(state):
        images, labels = sharding.shard_batch(next(batches), mesh)
        return train_step(state, images, labels, config=config, steps_per_epoch=spe)

    def on_device(state):
        return resident_train_step(state, *resident, order, config=config,
                                   steps_per_epoch=spe, mesh=mesh)  # fmt: skip

    fns = {"host": host, "resident": on_device}
    rates = {name: [] for name in fns}
    t = time.perf_counter()  # what the host-fed path adds per step: cut, copy, assemble
    for _ in range(steps):
        jax.block_until_ready(sharding.shard_batch(next(batches), mesh))
    rates["feed_ms"] = [(time.perf_counter() - t) / steps * 1e3]
    for r in range(rounds + 1):  # round 0 compiles
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                states[name], m = fn(states[name])
            jax.block_until_ready((states[name], m))
            if r:
                rates[name].append(steps * config.batch_size / (time.perf_counter() - t))
    return rates


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
    p.add_argument("--feeding", type=int, default=0, metavar="K",
                   help="then K interleaved rounds host-fed against resident data")
    p.add_argument("--examples", type=int, default=10_000, help="training set of --feeding")
    args = p.parse_args(argv)
    print(
        f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"| model | params | img/s | img per CPU-s | compile s | min / 50k epoch | "
        f"min / {args.preset} run |"
    )
    print("|---|---|---|---|---|---|---|")
    feeding = []
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
        if args.feeding:
            feeding.append((name, compare_feeding(config, args.examples, args.steps,
                                                  args.feeding)))  # fmt: skip
    if feeding:
        print(f"\nfeeding, {args.examples} images, {args.feeding} interleaved rounds of "
              f"{args.steps} steps: median img/s and resident ÷ host-fed per round")  # fmt: skip
        print("| model | host-fed img/s | resident img/s | resident ÷ host-fed | "
              "host feeding ms/step |")  # fmt: skip
        print("|---|---|---|---|---|")
        for name, rates in feeding:
            ratio = [r / h for r, h in zip(rates["resident"], rates["host"], strict=True)]
            print(f"| {name} | {statistics.median(rates['host']):.0f} | "
                  f"{statistics.median(rates['resident']):.0f} | "
                  f"{statistics.median(ratio):.2f} ({min(ratio):.2f}–{max(ratio):.2f}) | "
                  f"{rates['feed_ms'][0]:.2f} |")


if __name__ == "__main__":
    main()
