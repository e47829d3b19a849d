"""The performance suite: diffjax against a PyTorch eager reference of the same models.

    python -m benchmarks.suite                        # depths 1, 6, 12; batch 128 (minutes)
    python -m benchmarks.suite --depths 1 --batch 16 --repeats 2     # a quick look
    python -m benchmarks.suite --impls reference fused fused_xla --no-torch   # attention paths
    python -m benchmarks.suite --depths 6 --batch 32 --impls reference fused fused_xla \
        --interleave 8 --no-torch      # + train-step speed of each path ÷ reference, interleaved

For ViT and DiffViT (width 192, 6 heads, patch 4, CIFAR shapes) at each depth it times, as the
median over ``--repeats`` runs after a warm-up (compile time reported separately):

* train: forward, cross-entropy, backward and an AdamW update (jitted, buffers donated; PyTorch:
  ``torch.optim.AdamW``);
* eval: a forward pass;
* PGD: one ℓ∞ PGD step (input gradient, signed step, projection), from ``diffjax.attacks.pgd``
  with ``--attack-steps`` steps, divided by the steps; PyTorch: the same loop by hand;
* CW: one CW-L2 Adam iteration in tanh space (``diffjax.attacks.cw_l2`` with one binary-search
  step and no early abort), divided by the iterations; PyTorch: the same iteration by hand;
* σmax: the exact local Lipschitz constant of the first attention layer at one example by
  Lanczos (``diffjax.analysis``; no PyTorch counterpart).

Each model runs with every attention implementation of ``--impls`` (``reference``: einsums and a
materialised softmax, the default; ``fused``: cuDNN's ``jax.nn.dot_product_attention`` on a GPU
in bf16, the reference formulation elsewhere; ``fused_xla``: the fused formulation through XLA
on any backend), one row each (column ``attention``); PyTorch runs once per model. It prints
img/s for both, the ratio diffjax / PyTorch, and the achieved GFLOP/s (XLA's cost analysis of
the compiled step) as a fraction of this machine's measured float32 matmul peak.
With ``--interleave K`` it then times the train step of every implementation in turn, K rounds
(one step of each per round, after compilation), and prints per model each path's speed ÷ the
first path's as the median and range of the per-round ratios: on a shared machine whose load
drifts, the comparison that means something.
PyTorch is the optional ``bench`` extra; the reference is checked against diffjax on shared
weights in ``tests/test_torch_reference.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import diffjax as dj
from diffjax import analysis as an
from diffjax import attacks
from diffjax.attention import IMPLS

try:
    import torch

    from benchmarks.torch_reference import from_diffjax
except ImportError:  # the suite still reports diffjax alone
    torch = None


def median_time(fn, repeats: int) -> tuple[float, float]:
    """(compile-and-first-run seconds, median seconds of the next ``repeats`` runs)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul GFLOP/s of this machine through XLA."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    _, s = median_time(lambda: jax.block_until_ready(f(a)), repeats)
    return 2 * n**3 / s / 1e9


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return None if not cost else cost.get("flops")


def _train_step_fn(model, x, y):
    """A compiled, buffer-donating AdamW train step and its (params, opt_state) to start from."""
    apply, params = dj.functional(model)
    tx = optax.adamw(1e-3)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    def train_step(p, o, x, y):
        g = jax.grad(loss)(p, x, y)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o

    opt = tx.init(params)
    step = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt, x, y).compile()
    return step, [jax.tree.map(jnp.copy, params), opt]  # donated: keep the model's own arrays


def interleaved_ratios(models, x, y, rounds: int) -> dict[str, list[float]]:
    """impl → per-round train-step speed of that model ÷ the first model's, ``rounds`` rounds.

    Args:
      models: impl → ViT, one per attention implementation (the first is the baseline).
    """
    steps = {impl: _train_step_fn(m, x, y) for impl, m in models.items()}

    def once(impl):
        step, state = steps[impl]
        t = time.perf_counter()
        state[0], state[1] = step(state[0], state[1], x, y)
        jax.block_until_ready(state[0])
        return time.perf_counter() - t

    for impl in steps:  # warm-up
        once(impl)
    base = next(iter(steps))
    ratios = {impl: [] for impl in steps}
    for _ in range(rounds):
        times = {impl: once(impl) for impl in steps}
        for impl in steps:
            ratios[impl].append(times[base] / times[impl])
    return ratios


def jax_cases(model, x, y, args) -> dict[str, tuple[float, float, float | None]]:
    """name → (compile s, median s per image-batch step, flops per step)."""
    apply, params = dj.functional(model)
    out = {}
    step, state = _train_step_fn(model, x, y)

    def run_train():
        state[0], state[1] = step(state[0], state[1], x, y)
        jax.block_until_ready(state[0])

    out["train"] = (*median_time(run_train, args.repeats), _flops(step))
    fwd = jax.jit(apply).lower(params, x).compile()
    out["eval"] = (*median_time(lambda: jax.block_until_ready(fwd(params, x)), args.repeats),
                   _flops(fwd))  # fmt: skip
    model_fn = attacks.model_function(model)
    key, k = jax.random.key(0), args.attack_steps
    pgd = attacks.PGDConfig(eps=4 / 255, steps=k)
    c, s = median_time(lambda: jax.block_until_ready(
        attacks.pgd(model_fn, x, y, key, pgd).adv_images), args.repeats)  # fmt: skip
    out["pgd"] = (c, s / k, None)
    cw = attacks.CWConfig(binary_search_steps=1, max_iterations=k, abort_early=False)
    c, s = median_time(lambda: jax.block_until_ready(
        attacks.cw_l2(model_fn, x, y, key, cw).adv_images), args.repeats)  # fmt: skip
    out["cw"] = (c, s / k, None)
    u = an.layer_input(model, x[:1], 0, "attention_input")[0]
    sigma = jax.jit(lambda u: an.exact_local_lipschitz(
        lambda v: an.attention_layer(model, v, 0), u, method="lanczos", key=key).value)  # fmt: skip
    c, s = median_time(lambda: jax.block_until_ready(sigma(u)), args.repeats)
    out["sigma_max"] = (c, s, None)
    return out


def torch_cases(model, x, y, args, kinds=("train", "eval", "pgd", "cw")) -> dict[str, float]:
    """kind → median seconds per step of the PyTorch eager reference, for each of ``kinds``."""
    net = from_diffjax(model)
    xt, yt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y)).long()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ce = torch.nn.functional.cross_entropy

    def train():
        opt.zero_grad()
        ce(net(xt), yt).backward()
        opt.step()

    def evaluate():
        with torch.no_grad():
            net(xt)

    eps, k = 4 / 255, args.attack_steps
    for p in net.parameters():
        p.requires_grad_(False)

    def pgd():
        adv = (xt + torch.empty_like(xt).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(k):
            adv.requires_grad_(True)
            (g,) = torch.autograd.grad(ce(net(adv), yt), adv)
            adv = torch.min(torch.max(adv.detach() + 2.5 * eps / k * g.sign(), xt - eps), xt + eps)
            adv = adv.clamp(0, 1)

    def cw():
        w = torch.atanh((xt * 2 - 1) * 0.999999).requires_grad_(True)
        adam = torch.optim.Adam([w], lr=1e-2)
        onehot = torch.nn.functional.one_hot(yt, model.config.num_classes).bool()
        for _ in range(k):
            adv = (torch.tanh(w) + 1) / 2
            z = net(adv)
            other = z.masked_fill(onehot, -1e9).amax(1)
            hinge = (z[onehot] - other).clamp(min=0)
            loss = ((adv - xt) ** 2).flatten(1).sum(1) + 1e-3 * hinge
            adam.zero_grad()
            loss.sum().backward()
            adam.step()

    out = {}
    for name, fn, per in (
        ("train", train, 1),
        ("eval", evaluate, 1),
        ("pgd", pgd, k),
        ("cw", cw, k),
    ):
        if name not in kinds:
            continue
        if name == "train":
            for p in net.parameters():
                p.requires_grad_(True)
        elif name == "eval":
            for p in net.parameters():
                p.requires_grad_(False)
        out[name] = median_time(fn, args.repeats)[1] / per
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--depths", type=int, nargs="+", default=[1, 6, 12])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attack-steps", type=int, default=5, help="PGD steps / CW iterations timed")
    p.add_argument("--no-torch", action="store_true", help="diffjax only")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=["reference"],
                   help="attention implementations, one row each")
    p.add_argument("--interleave", type=int, default=0, metavar="K",
                   help="then K interleaved rounds of train steps: each path ÷ the first")
    p.add_argument("--skip-table", action="store_true", help="only the interleaved comparison")
    args = p.parse_args(argv)
    use_torch = torch is not None and not args.no_torch
    if use_torch:
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
    peak = matmul_peak()
    print(f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.1f}; "
          f"float32 matmul peak {peak:.1f} GFLOP/s (XLA, 2048²)")  # fmt: skip
    print("| model | attention | depth | kind | diffjax img/s | PyTorch img/s | ratio | GFLOP/s | "
          "of peak | compile s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for depth in [] if args.skip_table else args.depths:
        for (name, attention), impl in itertools.product(
            (("ViT", "softmax"), ("DiffViT", "diff")), args.impls
        ):
            config = dj.preset("cifar", attention=attention, depth=depth, width=args.width,
                               num_heads=args.heads, attention_impl=impl)  # fmt: skip
            model = dj.ViT(config, rngs=nnx.Rngs(0))
            x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
            y = jnp.arange(args.batch, dtype=jnp.int32) % config.num_classes
            ours = jax_cases(model, x, y, args)
            # The PyTorch reference has one attention implementation: timed once per model.
            first = impl == args.impls[0]
            ref = torch_cases(model, x, y, args) if use_torch and first else {}
            for kind, (compile_s, sec, flops) in ours.items():
                n = 1 if kind == "sigma_max" else args.batch
                ips = n / sec
                t_ips = n / ref[kind] if kind in ref else None
                gflops = flops / sec / 1e9 if flops else None
                row = {"model": name, "attention": impl, "depth": depth, "kind": kind,
                       "img_per_s": ips,
                       "torch_img_per_s": t_ips, "ratio": t_ips and ips / t_ips,
                       "gflops": gflops, "peak_fraction": gflops and gflops / peak,
                       "compile_s": compile_s}  # fmt: skip
                rows.append(row)
                f = lambda v, s: "—" if v is None else format(v, s)  # noqa: E731
                cells = [
                    name,
                    impl,
                    depth,
                    kind,
                    f"{ips:.1f}",
                    f(t_ips, ".1f"),
                    f(row["ratio"], ".2f"),
                    f(gflops, ".1f"),
                    f(row["peak_fraction"], ".0%"),
                    f"{compile_s:.1f}",
                ]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    if args.interleave:
        print(f"\ntrain step, batch {args.batch}: speed ÷ {args.impls[0]}, median (range) of "
              f"{args.interleave} interleaved rounds")  # fmt: skip
        print("| model | depth | " + " | ".join(args.impls) + " |")
        print("|---|---|" + "---|" * len(args.impls))
    for depth in args.depths if args.interleave else []:
        for name, attention in (("ViT", "softmax"), ("DiffViT", "diff")):
            models = {impl: dj.ViT(dj.preset("cifar", attention=attention, depth=depth,
                                             width=args.width, num_heads=args.heads,
                                             attention_impl=impl), rngs=nnx.Rngs(0))
                      for impl in args.impls}  # fmt: skip
            x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
            y = jnp.arange(args.batch, dtype=jnp.int32) % 10
            ratios = interleaved_ratios(models, x, y, args.interleave)
            cells = [f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"
                     for r in ratios.values()]  # fmt: skip
            print(f"| {name} | {depth} | " + " | ".join(cells) + " |", flush=True)
            rows.append({"model": name, "depth": depth, "kind": "interleaved_train",
                         "ratios": ratios})  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
