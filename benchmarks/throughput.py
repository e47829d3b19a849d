"""The accelerator throughput probe: train and PGD img/s and model FLOP utilisation, both paths.

    python -m benchmarks.throughput --seconds 60 --out probe.json          # the paper shape
    python -m benchmarks.throughput --size tiny --seconds 5 --out p.json   # seconds, any CPU

For ViT and DiffViT at the ``paper`` shape (S/4 on 32 px images; ``tiny``: Pico/16), and for
each attention path (``reference``, ``fused``), it times after compilation

* train: one jitted, buffer-donating AdamW step on a batch (forward, backward, update);
* PGD: ``diffjax.attacks.pgd`` (ℓ∞, ε = 8/255) over a batch, per gradient step;

and reports img/s, the model FLOPs per image, and the model FLOP utilisation MFU = model FLOPs
per second ÷ ``--peak-tflops``
(default: 790, an H100/H200's dense bf16 peak, on a GPU; elsewhere the measured float32 matmul
rate of this machine). The time budget is split evenly over the cases; compile time is reported
apart and not counted. Model FLOPs are XLA's cost analysis of the lowered (unoptimised) train
step and input gradient of the *reference* formulation, for both paths: the model's arithmetic,
not the implementation's (fused DA's zero-padded products do not count as useful work, and
XLA's cost analysis does not see inside cuDNN's kernel). Uses only the diffjax library, jax,
flax and optax (no ml_collections, no dataset): it runs on a bare accelerator image.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import diffjax as dj
from diffjax import attacks

GPU_BF16_PEAK_TFLOPS = 790.0  # H100/H200 SXM dense bf16, no sparsity
SIZES = {"paper": ("S/4", 32), "tiny": ("Pico/16", 32)}
PGD_STEPS = 10


def _flops(program) -> float:
    """FLOPs of XLA's cost analysis of a lowered or compiled program."""
    cost = program.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _timed(fn, budget_s: float, min_runs: int = 2) -> tuple[int, float]:
    """Run ``fn`` (which blocks) until ``budget_s`` is spent (at least ``min_runs``); (runs, s)."""
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < budget_s:
        fn()
        runs += 1
    return runs, time.perf_counter() - start


def matmul_tflops(n: int = 2048) -> float:
    """This machine's measured float32 matmul rate through XLA, TFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    runs, s = _timed(lambda: jax.block_until_ready(f(a)), 0.5)
    return 2 * n**3 * runs / s / 1e12


def _train_and_input_grad(model):
    """(params, AdamW, loss(p, x, y), train_step(p, opt_state, x, y)) of a model."""
    apply, params = dj.functional(model)
    tx = optax.adamw(1e-3)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    def train_step(p, o, x, y):
        g = jax.grad(loss)(p, x, y)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o

    return params, tx, loss, train_step


def model_gflops(config: dj.ViTConfig, x, y) -> tuple[float, float]:
    """GFLOPs per image of one train step and one input gradient, the reference formulation.

    XLA's cost analysis of the lowered programs (no compilation: within 1 % of the compiled
    programs' counts, 2.50 against 2.51 MFLOP for the input gradient of Pico/16, measured).
    """
    model = dj.ViT(config.replace(attention_impl="reference"), rngs=nnx.Rngs(0))
    params, tx, loss, train_step = _train_and_input_grad(model)
    step = jax.jit(train_step).lower(params, tx.init(params), x, y)
    input_grad = jax.jit(jax.grad(lambda x: loss(params, x, y))).lower(x)
    return _flops(step) / len(x) / 1e9, _flops(input_grad) / len(x) / 1e9


def probe_case(config: dj.ViTConfig, batch: int, budget_s: float) -> dict:
    """Train-step and PGD throughput of one model config; model FLOPs per image."""
    model = dj.ViT(config, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (batch, config.image_size, config.image_size, 3))
    y = jnp.arange(batch, dtype=jnp.int32) % config.num_classes
    params, tx, loss, train_step = _train_and_input_grad(model)

    t = time.perf_counter()
    state = [jax.tree.map(jnp.copy, params), tx.init(params)]
    step = jax.jit(train_step, donate_argnums=(0, 1)).lower(*state, x, y).compile()
    state[0], state[1] = step(*state, x, y)
    jax.block_until_ready(state[0])
    compile_train = time.perf_counter() - t

    def run_train():
        state[0], state[1] = step(*state, x, y)
        jax.block_until_ready(state[0])

    runs, s = _timed(run_train, budget_s / 2)
    train_ips = runs * batch / s
    model_fn = attacks.model_function(model)
    pgd_config = attacks.PGDConfig(eps=8 / 255, steps=PGD_STEPS)
    key = jax.random.key(2)

    def run_pgd():
        jax.block_until_ready(attacks.pgd(model_fn, x, y, key, pgd_config).adv_images)

    t = time.perf_counter()
    run_pgd()
    compile_pgd = time.perf_counter() - t
    runs, s = _timed(run_pgd, budget_s / 2)
    return {
        "train_img_per_s": train_ips,
        "pgd_img_per_s": runs * batch * PGD_STEPS / s,  # image-gradient steps per second
        # One PGD step costs one input gradient: its FLOPs, not the train step's.
        **dict(zip(("train_gflop_per_img", "pgd_gflop_per_img_step"),
                   model_gflops(config, x, y), strict=True)),  # fmt: skip
        "compile_train_s": compile_train,
        "compile_pgd_s": compile_pgd,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--size", choices=sorted(SIZES), default="paper")
    p.add_argument("--seconds", type=float, default=60.0, help="timed budget, all cases")
    p.add_argument("--batch", type=int, default=None, help="default: 512 on a GPU, else 32")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, else float32")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--models", nargs="+", choices=("ViT", "DiffViT"), default=["ViT", "DiffViT"])
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    batch = args.batch or (512 if gpu else 32)
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif gpu:
        peak, peak_source = GPU_BF16_PEAK_TFLOPS, "H100/H200 dense bf16"
    else:
        peak, peak_source = matmul_tflops(), "measured float32 matmul (XLA, 2048²)"
    name, image = SIZES[args.size]
    cases = [(m, a, impl) for m, a in (("ViT", "softmax"), ("DiffViT", "diff"))
             if m in args.models for impl in ("reference", "fused")]  # fmt: skip
    report = {"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
              "jax": jax.__version__, "size": args.size, "model": name, "batch": batch,
              "dtype": dtype, "peak_tflops": peak, "peak_source": peak_source,
              "cpu_count": os.cpu_count(), "rows": []}  # fmt: skip
    print(f"{report['devices']}; {name}, batch {batch}, {dtype}; peak {peak:.3g} TFLOP/s "
          f"({peak_source})")  # fmt: skip
    print("| model | attention | train img/s | train MFU | PGD img·step/s | PGD MFU | compile s |")
    print("|---|---|---|---|---|---|---|")
    for model_name, attention, impl in cases:
        config = dj.variant(name, image_size=image, attention=attention, dtype=dtype,
                            attention_impl=impl)  # fmt: skip
        row = {"model": model_name, "attention_impl": impl,
               **probe_case(config, batch, args.seconds / len(cases))}  # fmt: skip
        row["train_mfu"] = row["train_img_per_s"] * row["train_gflop_per_img"] / (peak * 1e3)
        row["pgd_mfu"] = row["pgd_img_per_s"] * row["pgd_gflop_per_img_step"] / (peak * 1e3)
        report["rows"].append(row)
        print(f"| {model_name} | {impl} | {row['train_img_per_s']:.1f} | {row['train_mfu']:.1%} "
              f"| {row['pgd_img_per_s']:.1f} | {row['pgd_mfu']:.1%} | "
              f"{row['compile_train_s'] + row['compile_pgd_s']:.1f} |", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
