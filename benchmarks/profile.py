"""Where a diffjax training or PGD step spends its time, and what bounds it against PyTorch.

    python -m benchmarks.profile                          # ViT and DiffViT, depth 6, batch 128
    python -m benchmarks.profile --depth 1 --step pgd --no-torch

For each model it prints three tables:

1. **Op profile.** The jitted step (the suite's train step: loss, gradient, AdamW; or one PGD
   step: loss, input gradient, signed step) is traced with ``jax.profiler``; every XLA op's time
   (summed over the threads that ran it, so it can exceed the wall time) is read back with
   ``jax.profiler.ProfileData`` and grouped by what the op computes: GEMM (a dot, possibly with
   fused elementwise work), reduction, elementwise, layout (pure copies and transposes), and
   thread-pool waits.
2. **GEMM kernels.** Each distinct float32 matrix product of the step, at the model's own shapes
   (forward ``X·W``, input gradient ``G·Wᵀ``, weight gradient ``Xᵀ·G``, the batched attention
   products), timed alone through XLA and through PyTorch: GFLOP/s and the ratio.
3. **Bound.** The step's GEMMs alone, at XLA's isolated speed, against PyTorch's whole step:
   even if every other op took no time, diffjax could be at most that ratio faster.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import diffjax as dj
from benchmarks.suite import median_time, torch, torch_cases

KINDS = ("GEMM", "reduction", "elementwise", "layout", "pool wait")
_LAYOUT_OPS = {"parameter", "constant", "bitcast", "copy", "transpose", "reshape", "slice",
               "concatenate", "pad", "broadcast", "tuple", "get-tuple-element"}  # fmt: skip


def op_kinds(hlo_text: str) -> dict[str, str]:
    """Instruction name → kind (see ``KINDS``) for every instruction of an optimised HLO module.

    A fusion's kind is decided by the opcodes of the computation it calls: any dot → GEMM, else
    any reduce → reduction, else only data movement → layout, else elementwise.
    """
    ops_of: dict[str, set[str]] = {}
    calls: dict[str, str] = {}
    opcode: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            ops_of[current] = set()
            continue
        inst = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if not inst or current is None:
            continue
        name, op = inst.groups()
        ops_of[current].add(op)
        opcode[name] = op
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if called:
            calls[name] = called.group(1)

    def kind(ops: set[str]) -> str:
        if ops & {"dot", "convolution"}:
            return "GEMM"
        if "reduce" in ops:
            return "reduction"
        return "layout" if ops <= _LAYOUT_OPS else "elementwise"

    return {n: kind(ops_of.get(calls[n], set()) if n in calls else {o}) for n, o in opcode.items()}


def op_profile(fn, args, repeats: int) -> tuple[dict[str, float], float]:
    """(kind → op milliseconds per call, summed over threads; wall milliseconds per call)."""
    compiled = jax.jit(fn).lower(*args).compile()
    kinds = op_kinds(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as log_dir:
        jax.profiler.start_trace(log_dir)
        t = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(compiled(*args))
        wall = (time.perf_counter() - t) / repeats
        jax.profiler.stop_trace()
        paths = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
        if len(paths) != 1:
            raise RuntimeError(f"jax.profiler wrote {len(paths)} traces to {log_dir}, not one")
        (path,) = paths
        data = jax.profiler.ProfileData.from_file(path)
    totals: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if "Await" in event.name:
                    totals["pool wait"] += event.duration_ns
                elif event.name in kinds:
                    totals[kinds[event.name]] += event.duration_ns
    return {k: totals[k] / repeats / 1e6 for k in KINDS}, wall * 1e3


@dataclasses.dataclass(frozen=True)
class Gemm:
    """One matrix product ``[m, k] · [k, n]`` (``batch`` of them), ``count`` times per step.

    ``layout`` says which operand is stored transposed, as autodiff produces them: ``"nn"``
    (forward), ``"nt"`` (input gradient, ``G·Wᵀ``), ``"tn"`` (weight gradient, ``Xᵀ·G``).
    """

    name: str
    m: int
    k: int
    n: int
    layout: str
    count: int
    batch: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.k * self.n


def step_gemms(config: dj.ViTConfig, batch: int, step: str) -> list[Gemm]:
    """The GEMMs of one ``step`` (``"train"`` or ``"pgd"``) of ``config`` at ``batch`` images.

    Training computes every forward product, its input gradient (except the image's) and its
    weight gradient; a PGD step the forward product and the input gradient only.
    """
    c, b, depth = config, batch, config.depth
    t, d, hidden = b * c.num_tokens, c.width, int(round(c.width * c.mlp_ratio))
    patches, patch_dim = c.num_tokens - 1, c.patch_size**2 * c.channels
    dk, n = d // c.num_heads, c.num_tokens
    # DA: value heads are half as many and twice as wide as the q/k sub-heads.
    heads_v, dv = (c.num_heads // 2, 2 * dk) if c.attention == "diff" else (c.num_heads, dk)
    g = [
        Gemm("patch embed", b * patches, patch_dim, d, "nn", 1),
        Gemm("q, k, v, out", t, d, d, "nn", 4 * depth),
        Gemm("fc1", t, d, hidden, "nn", depth),
        Gemm("fc2", t, hidden, d, "nn", depth),
        Gemm("q·kᵀ", n, dk, n, "nt", depth, b * c.num_heads),
        Gemm("a·v", n, n, dv, "nn", depth, b * heads_v),
        Gemm("d(q, k, v, out)/dx", t, d, d, "nt", 4 * depth),
        Gemm("d fc1/dx", t, hidden, d, "nt", depth),
        Gemm("d fc2/dx", t, d, hidden, "nt", depth),
        Gemm("d a = d o·vᵀ", n, dv, n, "nt", depth, b * heads_v),
        Gemm("d v = aᵀ·d o", n, n, dv, "tn", depth, b * heads_v),
        Gemm("d q = d logits·k", n, n, dk, "nn", depth, b * c.num_heads),
        Gemm("d k = d logitsᵀ·q", n, n, dk, "tn", depth, b * c.num_heads),
    ]
    if step == "pgd":
        return g + [Gemm("d patch embed/dx", b * patches, d, patch_dim, "nt", 1)]
    return g + [
        Gemm("dW patch embed", patch_dim, b * patches, d, "tn", 1),
        Gemm("dW q, k, v, out", d, t, d, "tn", 4 * depth),
        Gemm("dW fc1", d, t, hidden, "tn", depth),
        Gemm("dW fc2", hidden, t, d, "tn", depth),
    ]


def _operands(gemm: Gemm, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a_shape = (gemm.k, gemm.m) if gemm.layout == "tn" else (gemm.m, gemm.k)
    b_shape = (gemm.n, gemm.k) if gemm.layout == "nt" else (gemm.k, gemm.n)
    a = rng.standard_normal((gemm.batch, *a_shape), dtype=np.float32)
    return a, rng.standard_normal((gemm.batch, *b_shape), dtype=np.float32)


def gemm_seconds(gemm: Gemm, repeats: int, use_torch: bool) -> tuple[float, float | None]:
    """Median seconds of one ``gemm`` through XLA and through PyTorch (``None`` without it)."""
    a, b = _operands(gemm)
    ta = (lambda x: x.mT) if gemm.layout == "tn" else (lambda x: x)
    tb = (lambda x: x.mT) if gemm.layout == "nt" else (lambda x: x)
    f = jax.jit(lambda a, b: ta(a) @ tb(b))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ours = median_time(lambda: jax.block_until_ready(f(ja, jb)), repeats)[1]
    if not use_torch:
        return ours, None
    xa, xb = torch.from_numpy(a), torch.from_numpy(b)
    return ours, median_time(lambda: ta(xa) @ tb(xb), repeats)[1]


def step_fn(model, x, y, step: str):
    """(function, arguments) of one step on images ``x`` [B, H, W, C] and labels ``y`` [B]:
    ``"train"`` (loss, gradient, AdamW update) or ``"pgd"`` (loss, input gradient, signed step,
    projection onto the 4/255 ℓ∞ ball and the [0, 1] box)."""
    apply, params = dj.functional(model)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    if step == "pgd":
        eps = 4 / 255

        def pgd_step(p, x, x0, y):
            g = jax.grad(loss, argnums=1)(p, x, y)
            return jnp.clip(jnp.clip(x + eps / 4 * jnp.sign(g), x0 - eps, x0 + eps), 0, 1)

        return pgd_step, (params, x, x, y)
    tx = optax.adamw(1e-3)

    def train_step(p, o, x, y):
        updates, o = tx.update(jax.grad(loss)(p, x, y), o, p)
        return optax.apply_updates(p, updates), o

    return train_step, (params, tx.init(params), x, y)


def report(name: str, model, step: str, args) -> dict:
    """Print the three tables for ``model`` and return their numbers."""
    x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
    y = jnp.arange(args.batch, dtype=jnp.int32) % model.config.num_classes
    fn, fn_args = step_fn(model, x, y, step)
    kinds, wall = op_profile(fn, fn_args, args.repeats)
    total = sum(kinds.values())
    print(f"\n### {name}, depth {model.config.depth}, {step} step, batch {args.batch}: "
          f"{wall:.0f} ms wall, {total:.0f} ms of op time\n")  # fmt: skip
    print("| op kind | op ms | share |\n|---|---|---|")
    for k in KINDS:
        print(f"| {k} | {kinds[k]:.0f} | {kinds[k] / total:.0%} |")
    torch_s = torch_cases(model, x, y, args, kinds=(step,))[step] if args.use_torch else None
    print("\n| GEMM | layout | shape (batch × m·k·n) | per step | XLA GFLOP/s | PyTorch GFLOP/s | "
          "ratio |\n|---|---|---|---|---|---|---|")  # fmt: skip
    ours_s = theirs_s = 0.0
    for gemm in step_gemms(model.config, args.batch, step):
        s, t = gemm_seconds(gemm, args.repeats, args.use_torch)
        ours_s += gemm.count * s
        theirs_s += gemm.count * (t or 0.0)
        shape = f"{gemm.batch} × {gemm.m}·{gemm.k}·{gemm.n}"
        theirs = "—" if t is None else f"{gemm.flops / t / 1e9:.0f}"
        ratio = "—" if t is None else f"{t / s:.2f}"
        print(f"| {gemm.name} | {gemm.layout} | {shape} | {gemm.count} | "
              f"{gemm.flops / s / 1e9:.0f} | {theirs} | {ratio} |")  # fmt: skip
    row = {"model": name, "step": step, "wall_ms": wall, "op_ms": kinds,
           "xla_gemm_ms": ours_s * 1e3}  # fmt: skip
    print(f"\nGEMMs alone, timed in isolation: XLA {ours_s * 1e3:.0f} ms per step", end="")
    if torch_s is not None:
        row.update(torch_gemm_ms=theirs_s * 1e3, torch_wall_ms=torch_s * 1e3)
        print(f", PyTorch {theirs_s * 1e3:.0f} ms. PyTorch's whole step: {torch_s * 1e3:.0f} ms; "
              f"diffjax now: {wall:.0f} ms (ratio {torch_s * 1e3 / wall:.2f}). Bound: with every "
              f"non-GEMM op free, diffjax ÷ PyTorch ≤ {torch_s / ours_s:.2f}.")  # fmt: skip
    else:
        print(".")
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--step", choices=("train", "pgd"), default="train")
    p.add_argument("--models", nargs="+", choices=("ViT", "DiffViT"), default=["ViT", "DiffViT"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attack-steps", type=int, default=5, help="PGD steps PyTorch is timed over")
    p.add_argument("--no-torch", action="store_true", help="diffjax only")
    args = p.parse_args(argv)
    for name in ("depth", "batch", "width", "heads", "repeats", "attack_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.use_torch = torch is not None and not args.no_torch
    if args.use_torch:
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.models:
        attention = "diff" if name == "DiffViT" else "softmax"
        config = dj.preset("cifar", attention=attention, depth=args.depth, width=args.width,
                           num_heads=args.heads)  # fmt: skip
        rows.append(report(name, dj.ViT(config, rngs=nnx.Rngs(0)), args.step, args))
    return rows


if __name__ == "__main__":
    main()
