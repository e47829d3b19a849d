"""diffjax's AutoAttack against the official AutoAttack code (or torchattacks) on the same model.

    python -m benchmarks.autoattack_bench --num-examples 500 --workdir /tmp/aa-bench --json r.json
    python -m benchmarks.autoattack_bench --profile --num-examples 500 --workdir /tmp/aa-bench
    python -m benchmarks.autoattack_bench --table rows.json          # the Markdown tables again

One invocation trains (or reloads from ``--workdir``) a small DiffViT on the embedded CIFAR-10
sample, copies its weights into the PyTorch twin (:mod:`benchmarks.torch_reference`, checked to
compute the same logits) and attacks the first ``--num-examples`` test images, in diffjax and in
the reference, row by row: standard AutoAttack ℓ∞ at ε = 4/255 and 8/255 and ℓ2 at 0.5, then
APGD-CE, APGD-T, FAB-T and Square alone at ℓ∞ 8/255.

``--reference official`` (default) is Croce & Hein's own code (github.com/fra31/auto-attack,
``pip install --no-deps`` of a clone; skipped with exit 0 when ``autoattack`` is not importable):
``AutoAttack(net, norm, eps, version="standard").run_standard_evaluation(x, y, bs=...)``, and for
one attack alone the same object with ``attacks_to_run = [name]``, which keeps the standard budgets
(``version="custom"`` would give APGD-CE five restarts). ``--reference torchattacks`` is the PyPI
reimplementation, built from its APGD / APGDT / FAB / Square with the standard budgets (its own
``AutoAttack`` class defaults to 10 iterations).

diffjax timings, each in a fresh subprocess: ``cold`` with an empty persistent compilation cache
(trace + compile + run), ``cached`` a second process whose persistent cache the cold one filled
(what re-running an evaluation costs), ``warm`` that process's second call (compiled code in
memory). Ratios are diffjax / reference. Every returned adversarial example of both sides is
re-checked by :func:`diffjax.attacks.recheck` (in the box, in the ε-ball, the claimed label
matches the diffjax model's re-evaluation); robust accuracy comes with its 95 % Wilson interval,
and "fooled only by" counts the examples one side fooled and the other did not.

``--profile``: per stage of diffjax's AutoAttack (APGD-CE, APGD-T, FAB-T, Square), its wall time
cold and warm, the tracing + lowering + XLA compile time and the number of programs compiled, the
examples it ran on and diffjax's model calls per example, against the official code's wall time,
examples and counted forward / backward passes per example in the same stage. torch is an
optional dependency (``pip install torch``; ``torchattacks`` for that reference).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROWS = (
    "autoattack:linf@4/255",
    "autoattack:linf@8/255",
    "autoattack:l2@0.5",
    "apgd-ce:linf@8/255",
    "apgd-t:linf@8/255",
    "fab-t:linf@8/255",
    "square:linf@8/255",
)
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")  # standard AutoAttack, in order
OFFICIAL_NORMS = {"linf": "Linf", "l2": "L2"}


def parse_row(spec: str) -> dict:
    """``"ATTACK:NORM@EPS"`` (EPS a number or a fraction such as 8/255) → its fields.

    Returns:
      ``{"attack", "norm", "eps" (float, [0, 1] pixel scale), "eps_label" (as written)}``.
    """
    head, sep, eps_label = spec.partition("@")
    attack, colon, norm = head.partition(":")
    if not (sep and colon) or attack not in ("autoattack", *STAGES) or norm not in OFFICIAL_NORMS:
        raise ValueError(f"bad row {spec!r}: want ATTACK:NORM@EPS, ATTACK in "
                         f"{('autoattack', *STAGES)}, NORM in {tuple(OFFICIAL_NORMS)}")  # fmt: skip
    num, slash, den = eps_label.partition("/")
    eps = float(num) / float(den) if slash else float(num)
    return {"attack": attack, "norm": norm, "eps": eps, "eps_label": eps_label}


def compare(labels, clean_pred, diffjax_pred, reference_pred) -> dict:
    """Robust accuracy of both sides over all n examples and the examples only one side fooled.

    Args:
      labels, clean_pred: [n] true classes and the model's clean predictions.
      diffjax_pred, reference_pred: [n] the (re-evaluated) predictions at each side's images.

    Returns:
      robust counts and their Wilson 95 % intervals (a clean-misclassified example is never
      robust), ``fooled_only_by_diffjax`` (robust against the reference, not diffjax) and
      ``fooled_only_by_reference``.
    """
    from diffjax.attacks.accounting import wilson_interval

    correct = np.asarray(clean_pred) == np.asarray(labels)
    ours = correct & (np.asarray(diffjax_pred) == labels)
    theirs = correct & (np.asarray(reference_pred) == labels)
    n = len(correct)
    return {
        "n": n,
        "clean_correct": int(correct.sum()),
        "diffjax_robust": int(ours.sum()),
        "reference_robust": int(theirs.sum()),
        "diffjax_ci": wilson_interval(int(ours.sum()), n),
        "reference_ci": wilson_interval(int(theirs.sum()), n),
        "fooled_only_by_diffjax": int(np.sum(~ours & theirs)),
        "fooled_only_by_reference": int(np.sum(ours & ~theirs)),
    }


def ratios(row: dict) -> dict:
    """diffjax time / reference time for the cold, cached and warm diffjax timings."""
    return {f"ratio_{k}": row[f"diffjax_{k}_s"] / row["reference_s"]
            for k in ("cold", "cached", "warm")}  # fmt: skip


def per_example(total: int, examples: int) -> float | None:
    """A stage's model passes (summed over its batches) per example it ran on."""
    return total / examples if examples else None


def fmt(value, spec: str = ".1f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def rows_table(rows: list[dict], reference: str) -> str:
    """The Markdown table of the benchmark rows (as written to ``--json``)."""

    def acc(r, side):
        lo, hi = r[f"{side}_ci"]
        return f"{r[f'{side}_robust'] / r['n']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [
        "| attack | diffjax cold (compile) | diffjax cached (compile) | diffjax warm | "
        f"{reference} | cold / ref | cached / ref | warm / ref | robust acc. diffjax [95 % CI] | "
        f"robust acc. {reference} [95 % CI] | fooled only by diffjax | "
        f"fooled only by {reference} |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} {r['norm']} ε={r['eps_label']} | {r['diffjax_cold_s']:.1f} s "
            f"({r['diffjax_compile_s']:.1f} s) | {r['diffjax_cached_s']:.1f} s "
            f"({r['diffjax_cached_compile_s']:.1f} s) | "
            f"{r['diffjax_warm_s']:.1f} s | {r['reference_s']:.1f} s | {r['ratio_cold']:.3f} | "
            f"{r['ratio_cached']:.3f} | {r['ratio_warm']:.3f} | {acc(r, 'diffjax')} | "
            f"{acc(r, 'reference')} | {r['fooled_only_by_diffjax']} | "
            f"{r['fooled_only_by_reference']} |"
        )
    return "\n".join(lines)


def profile_table(stages: list[dict]) -> str:
    """The Markdown table of ``--profile``'s stages."""
    lines = [
        "| stage | examples diffjax / official | diffjax cold | diffjax warm | compile "
        "(trace + lower + XLA) | programs compiled | diffjax calls / example | official | "
        "official forward / backward per example | fooled diffjax / official |",
        "|" + "---|" * 10,
    ]
    for s in stages:
        # The big compiles first, the op-by-op dispatches' programs summed as "other".
        ranked = sorted(s["programs_by_function"].items(), key=lambda kv: -kv[1][1])
        named = [f"{name} {k}: {t:.2f} s" for name, (k, t) in ranked if t >= 0.1]
        rest = [(k, t) for _, (k, t) in ranked if t < 0.1]
        if rest:
            named.append(f"other {sum(k for k, _ in rest)}: {sum(t for _, t in rest):.2f} s")
        by_function = "; ".join(named)
        lines.append(
            f"| {s['stage']} | {s['diffjax_examples']} / {fmt(s['official_examples'], 'd')} | "
            f"{s['diffjax_cold_s']:.2f} s | {s['diffjax_warm_s']:.2f} s | "
            f"{s['compile_s']:.2f} s ({s['trace_s']:.2f} + {s['lower_s']:.2f} + "
            f"{s['backend_s']:.2f}) | {s['programs']} ({by_function}) | "
            f"{fmt(s['diffjax_calls_per_example'])} | "
            f"{fmt(s['official_s'], '.2f', ' s')} | {fmt(s['official_forward_per_example'])} / "
            f"{fmt(s['official_backward_per_example'])} | {s['diffjax_fooled']} / "
            f"{fmt(s['official_fooled'], 'd')} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The model, the data and the attacks.


def model_config():
    import diffjax as dj

    return dj.preset(
        "cifar", width=64, depth=2, num_heads=4, patch_size=8, attention="diff", mlp_ratio=2.0
    )


def trained_model(workdir: pathlib.Path, epochs: int):
    """The benchmark model, trained on the embedded sample once and reloaded afterwards."""
    import diffjax as dj
    from diffjax.checkpoint import load_model, save_model
    from diffjax.data import embedded_sample
    from diffjax.train import TrainConfig, fit_to_data, train

    saved = workdir / "model"
    if saved.exists():
        return load_model(saved)
    train_data = embedded_sample("train")
    config = TrainConfig(model=model_config(), dataset="embedded", epochs=epochs, batch_size=125,
                         eval_batch_size=100, learning_rate=2e-3, warmup_epochs=0.5)  # fmt: skip
    config = fit_to_data(config, train_data)
    model, _ = train(config, workdir / "train", train_data=train_data,
                     test_data=dj.data.embedded_sample("test"))  # fmt: skip
    save_model(saved, model)
    return model


def test_images(n: int):
    """(images [n, 32, 32, 3] float32 in [0, 1], labels [n] int32): the first n test images."""
    from diffjax.data import embedded_sample

    test = embedded_sample("test")
    return test.images[:n].astype(np.float32) / 255, test.labels[:n].astype(np.int32)


def diffjax_config(row: dict):
    """Standard AutoAttack, or one of its stages alone with the standard budget."""
    from diffjax.attacks import AutoAttackConfig

    stages = None if row["attack"] == "autoattack" else (row["attack"],)
    return AutoAttackConfig(row["eps"], row["norm"], stages=stages)


def run_diffjax(model_fn, x, y, row: dict, seed: int = 0):
    """(seconds, result) of one AutoAttack call, blocked until done.

    ``model_fn`` is built once by the caller: each ``attacks.model_function`` call makes a new
    function, which the attack's jitted programs see as a new static argument and re-trace."""
    import jax

    from diffjax import attacks

    start = time.perf_counter()
    result = attacks.autoattack(model_fn, x, y, jax.random.key(seed), diffjax_config(row))
    result = jax.block_until_ready(result)
    return time.perf_counter() - start, result


class NCHW:
    """The reference code feeds NCHW batches; the twin takes NHWC like diffjax."""

    def __new__(cls, net):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, images):
                return self.net(images.permute(0, 2, 3, 1))

        return Wrapped().eval()


def official_adversary(net, row: dict, bs: int):
    """The official AutoAttack for one row; ``run(x, y)`` returns (adv, predicted labels)."""
    from autoattack import AutoAttack

    adversary = AutoAttack(net, norm=OFFICIAL_NORMS[row["norm"]], eps=row["eps"], seed=0,
                           version="standard", device="cpu", verbose=False)  # fmt: skip
    if row["attack"] != "autoattack":
        adversary.attacks_to_run = [row["attack"]]
    return adversary, lambda x, y: adversary.run_standard_evaluation(
        x, y, bs=bs, return_labels=True
    )


def torchattacks_adversary(net, row: dict, n_classes: int):
    import torch
    import torchattacks

    eps, norm = row["eps"], OFFICIAL_NORMS[row["norm"]]
    stages = {
        "apgd-ce": lambda: torchattacks.APGD(net, norm=norm, eps=eps, steps=100, n_restarts=1,
                                             loss="ce", seed=0),
        "apgd-t": lambda: torchattacks.APGDT(net, norm=norm, eps=eps, steps=100, n_restarts=1,
                                             n_classes=n_classes, seed=0),
        "fab-t": lambda: torchattacks.FAB(net, norm=norm, eps=eps, steps=100, n_restarts=1,
                                          multi_targeted=True, n_classes=n_classes, seed=0),
        "square": lambda: torchattacks.Square(net, norm=norm, eps=eps, n_queries=5000,
                                              n_restarts=1, seed=0),
    }  # fmt: skip
    names = STAGES if row["attack"] == "autoattack" else (row["attack"],)
    atk = torchattacks.MultiAttack([stages[s]() for s in names])

    def run(x, y):
        adv = atk(x, y).detach()
        with torch.no_grad():
            return adv, net(adv).argmax(1)

    return run


def reference_available(reference: str) -> bool:
    import importlib.util

    module = "autoattack" if reference == "official" else "torchattacks"
    return all(importlib.util.find_spec(m) is not None for m in ("torch", module))


def worker(args) -> None:
    """One diffjax call per ``--repeat``, in this fresh process with the given persistent cache;
    prints the wall and compile seconds of each as JSON and saves the last result to ``--out``.

    Compile seconds are JAX's tracing + lowering + backend compile events (the backend event
    covers a persistent-cache read too), measured rather than taken as a difference of two
    wall times, which load on the machine can make negative."""
    import jax

    from benchmarks.compile_cache import EVENTS

    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compiling = [0.0]

    def listen(event: str, duration: float, **_) -> None:
        compiling[0] += duration if event in EVENTS else 0.0

    jax.monitoring.register_event_duration_secs_listener(listen)
    from diffjax import attacks
    from diffjax.checkpoint import load_model

    model_fn = attacks.model_function(load_model(pathlib.Path(args.workdir) / "model"))
    x, y = test_images(args.num_examples)
    row = parse_row(args.worker)
    seconds, compile_seconds = [], []
    for _ in range(args.repeat):
        compiling[0] = 0.0
        s, result = run_diffjax(model_fn, x, y, row)
        seconds.append(s)
        compile_seconds.append(compiling[0])
    np.savez(args.out, adv=np.asarray(result.adv_images), success=np.asarray(result.success))
    print(json.dumps({"seconds": seconds, "compile_seconds": compile_seconds}))


def diffjax_process(args, spec: str, cache: str, repeat: int) -> tuple[dict, dict]:
    """(``{"seconds", "compile_seconds"}`` of each call, saved result) of a worker
    subprocess."""
    out = pathlib.Path(cache).with_suffix(".npz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.autoattack_bench", "--worker", spec, "--repeat",
         str(repeat), "--cache-dir", cache, "--out", str(out), "--workdir", args.workdir,
         "--num-examples", str(args.num_examples)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"diffjax worker failed:\n{done.stderr[-4000:]}")
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(out) as saved:
        return timings, dict(saved)


# ---------------------------------------------------------------------------------------------
# The profile.


class CountingModel:
    """The torch model, counting per stage the examples passed forward and backward through it.

    ``stage`` names the stage whose passes are being counted (None: not counted, e.g. the
    official code's sanity checks); a backward is counted by a hook on the output, so a stage
    that back-propagates several times through one forward (FAB's per-class Jacobian) counts
    each."""

    def __new__(cls, net):
        import torch

        class Counted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net, self.stage, self.counts = net, None, {}

            def tally(self, kind: str, examples: int):
                entry = self.counts.setdefault(self.stage, {"forward": 0, "backward": 0})
                entry[kind] += examples

            def forward(self, images):
                out = self.net(images)
                if self.stage is not None:
                    self.tally("forward", len(images))
                    if out.requires_grad:
                        examples = len(images)
                        out.register_hook(lambda g: self.tally("backward", examples) or g)
                return out

        return Counted().eval()


def official_stage_profile(counted, row: dict, x, y, bs: int) -> tuple[dict, object]:
    """Per stage of the official AutoAttack: wall seconds, examples, forward / backward passes.

    Each stage object's ``perturb`` is wrapped to time it and to name the stage counted."""
    adversary, run = official_adversary(counted, row, bs)
    owners = {"apgd-ce": adversary.apgd, "apgd-t": adversary.apgd_targeted,
              "fab-t": adversary.fab, "square": adversary.square}  # fmt: skip
    stages = {s: {"seconds": 0.0, "examples": 0} for s in STAGES}

    for name, owner in owners.items():

        def perturb(x, y, _inner=owner.perturb, _name=name):
            counted.stage = _name
            start = time.perf_counter()
            try:
                return _inner(x, y)
            finally:
                counted.stage = None
                stages[_name]["seconds"] += time.perf_counter() - start
                stages[_name]["examples"] += len(x)

        owner.perturb = perturb
    adv, pred = run(x, y)
    for name, entry in stages.items():
        entry.update(counted.counts.get(name, {"forward": 0, "backward": 0}))
    return stages, pred


def profile(args, model, x, y, net) -> list[dict]:
    """diffjax's AutoAttack stage by stage in this process (no persistent cache: every compile
    is real), checked to give the whole attack's per-example results, and the official code's
    stages counted on the same images."""
    import jax

    from benchmarks.compile_cache import EVENTS
    from diffjax import attacks
    from diffjax.attacks.autoattack import PHASES

    events = dict.fromkeys(EVENTS.values(), 0.0)
    # XLA compilations by jitted function: [programs, seconds]
    programs: dict[str, list] = {}

    def listen(event: str, duration: float, fun_name: str = "?", **_) -> None:
        if event in EVENTS:
            events[EVENTS[event]] += duration
            if event.endswith("backend_compile_duration"):
                entry = programs.setdefault(fun_name, [0, 0.0])
                entry[0] += 1
                entry[1] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    row = parse_row(args.profile_row)
    config = diffjax_config(row)
    model_fn = attacks.model_function(model)
    key = jax.random.key(0)
    n = len(y)
    ids = np.arange(n, dtype=np.int32)
    clean_pred = np.asarray(model_fn(x)).argmax(1)
    # Stage s alone, on images where the examples earlier stages fooled are replaced by their
    # adversarial (so they count as misclassified and are not attacked), is stage s of the whole
    # attack: same batch size, so the same buckets and compiled programs; same keys
    # fold_in(fold_in(key, id), s).
    current, fooled = x.copy(), clean_pred != y
    out = []
    for s, name in enumerate(config.sequence):
        plan = attacks.Plan((attacks.Stage(PHASES[name], config.stage_config(name), salt=s),),
                            first_success=True, min_classes=config.min_classes)  # fmt: skip
        members = ~fooled
        for k in events:
            events[k] = 0.0
        programs.clear()
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            result = jax.block_until_ready(attacks.run_plan(plan, model_fn, current, y, key,
                                                            ids=ids))  # fmt: skip
            timings.append(time.perf_counter() - start)
        calls = np.asarray(result.model_calls)[members] - 1  # the clean forward is not the stage's
        new = members & np.asarray(result.success)
        current[new] = np.asarray(result.adv_images)[new]
        fooled |= new
        out.append({"stage": name, "diffjax_examples": int(members.sum()),
                    "diffjax_cold_s": timings[0], "diffjax_warm_s": timings[1],
                    "compile_s": sum(events.values()), "trace_s": events["trace_s"],
                    "lower_s": events["lower_s"], "backend_s": events["compile_s"],
                    "programs": sum(k for k, _ in programs.values()),
                    "programs_by_function": {k: list(v) for k, v in programs.items()},
                    "diffjax_calls_per_example": per_example(int(calls.sum()), int(members.sum())),
                    "diffjax_fooled": int(new.sum())})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    whole = attacks.autoattack(model_fn, x, y, key, config)
    if not np.array_equal(np.asarray(whole.adv_images), current):
        raise AssertionError("the stage-by-stage run differs from the whole AutoAttack")

    official = None
    if reference_available("official"):
        import torch

        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        yt = torch.from_numpy(y).long()
        official, pred = official_stage_profile(CountingModel(net), row, xt, yt,
                                                args.batch_size or n)  # fmt: skip
        # A stage fools what it ran on less what the next one runs on (the last: less the
        # examples still robust at the end).
        ran = [official[s]["examples"] for s in config.sequence]
        left = [*ran[1:], int(np.sum((clean_pred == y) & (pred.numpy() == y)))]
        for s, r, rest in zip(config.sequence, ran, left, strict=True):
            official[s]["fooled"] = r - rest
    else:
        print("autoattack (the official code) is not installed: diffjax's stages only")
    for entry in out:
        o = official[entry["stage"]] if official else None
        entry["official_examples"] = o and o["examples"]
        entry["official_s"] = o and o["seconds"]
        entry["official_fooled"] = o and o["fooled"]
        for kind in ("forward", "backward"):
            entry[f"official_{kind}_per_example"] = o and per_example(o[kind], o["examples"])
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark.


def benchmark_row(args, spec, model, x, y, clean_pred, net, xt, yt, n_classes) -> dict:
    """One row: diffjax cold / cached / warm in subprocesses, then the reference, both
    re-checked."""
    import torch

    from diffjax import attacks

    row = parse_row(spec)
    cache = tempfile.mkdtemp(prefix="jax-cache-", dir=args.workdir)
    first, _ = diffjax_process(args, spec, cache, repeat=1)
    second, saved = diffjax_process(args, spec, cache, repeat=2)
    (cold,), (cached, warm) = first["seconds"], second["seconds"]
    model_fn = attacks.model_function(model)
    ours = attacks.recheck(model_fn, x, saved["adv"], y, saved["success"], row["eps"], row["norm"])

    torch.manual_seed(0)
    if args.reference == "official":
        _, run = official_adversary(net, row, args.batch_size or len(y))
    else:
        run = torchattacks_adversary(net, row, n_classes)
    start = time.perf_counter()
    adv_t, pred_t = run(xt, yt)
    reference_s = time.perf_counter() - start
    adv_ref = adv_t.detach().permute(0, 2, 3, 1).numpy()
    # The reference's own claim (its model's prediction ≠ label) must match diffjax's model.
    theirs = attacks.recheck(model_fn, x, adv_ref, y, pred_t.numpy() != y, row["eps"], row["norm"])
    out = {
        **row,
        "reference": args.reference,
        "diffjax_cold_s": cold,
        "diffjax_cached_s": cached,
        "diffjax_warm_s": warm,
        "diffjax_compile_s": first["compile_seconds"][0],
        "diffjax_cached_compile_s": second["compile_seconds"][0],
        "reference_s": reference_s,
        **compare(y, clean_pred, ours["adv_pred"], theirs["adv_pred"]),
        "diffjax_max_norm": float(ours[row["norm"]].max()),
        "reference_max_norm": float(theirs[row["norm"]].max()),
    }
    return {**out, **ratios(out)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=500)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "aa-bench"))
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (first run)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated ATTACK:NORM@EPS")
    parser.add_argument("--reference", choices=("official", "torchattacks"), default="official")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the official code's bs (default: all examples)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--profile", action="store_true", help="per-stage profile instead")
    parser.add_argument("--profile-row", default="autoattack:linf@8/255")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--table", default=None, help="print the tables of this --json and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for spec in [*args.rows.split(","), args.profile_row]:
        parse_row(spec)  # a typo fails here, not after an hour of attacks
    if args.table:
        saved = json.loads(pathlib.Path(args.table).read_text())
        if saved.get("rows"):
            print(rows_table(saved["rows"], saved["meta"]["reference"]))
        if saved.get("profile"):
            print(profile_table(saved["profile"]))
        return saved
    if args.worker:
        return worker(args)
    if not reference_available(args.reference):
        what = "autoattack (github.com/fra31/auto-attack)" if args.reference == "official" else \
            "torchattacks"  # fmt: skip
        print(f"{what} or torch is not installed: nothing to compare against, skipped")
        return {}

    import jax
    import torch

    from benchmarks.torch_reference import from_diffjax
    from diffjax import attacks

    torch.set_num_threads(args.threads)
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = trained_model(workdir, args.epochs)
    x, y = test_images(args.num_examples)
    net = NCHW(from_diffjax(model))
    xt, yt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
    with torch.no_grad():
        ref_logits = net(xt).numpy()
    jax_logits = np.asarray(attacks.model_function(model)(x))
    clean_pred = jax_logits.argmax(1)
    meta = {
        "reference": args.reference,
        "n": len(y),
        "clean_accuracy": float(np.mean(clean_pred == y)),
        "twin_max_logit_gap": float(np.abs(ref_logits - jax_logits).max()),
        "jax_devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
    }
    print(json.dumps(meta))
    saved = {"meta": meta}
    if args.profile:
        saved["profile"] = profile(args, model, x, y, net)
        print(profile_table(saved["profile"]))
    else:
        rows = saved["rows"] = []
        for spec in args.rows.split(","):
            rows.append(benchmark_row(args, spec, model, x, y, clean_pred, net, xt, yt,
                                      jax_logits.shape[1]))  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        print(rows_table(rows, args.reference))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(saved, indent=1))
    return saved


if __name__ == "__main__":
    main()
