"""The persistent compilation cache across processes: compile time of a first and second run.

    python -m benchmarks.compile_cache --workdir /tmp/cc          # PGD and AutoAttack (minutes)

Trains the ``mini`` model once (``diffjax train``), then for each attack runs the same
``diffjax attack`` twice, each in a fresh process, sharing one new cache directory. A process
reports its wall time and its compile time: the sum of JAX's
``/jax/core/compile/backend_compile_duration`` events (XLA compilation, or the cache read that
replaces it) and, apart, tracing and lowering to MLIR (which the cache cannot save). The target:
the second process's backend compile time ≤ 20 % of the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVENTS = {
    "/jax/core/compile/backend_compile_duration": "compile_s",
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
}
ATTACKS = {
    "pgd": ["--config=attack:pgd", "--config.steps=10"],
    "autoattack": ["--config=attack:autoattack", "--config.steps=5", "--config.num_targets=2",
                   "--config.queries=20"],  # fmt: skip
}


def child(argv: list[str]) -> None:
    """Run ``diffjax ARGV`` in this process; print one JSON line of its timings."""
    import jax

    totals = dict.fromkeys(EVENTS.values(), 0.0)

    def listen(event: str, duration: float, **_) -> None:
        if event in EVENTS:
            totals[EVENTS[event]] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    from diffjax.experiments import cli

    start = time.perf_counter()
    cli.run(argv)
    print(json.dumps({"wall_s": time.perf_counter() - start, **totals}))


def _process(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.compile_cache", "--child", *argv],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"diffjax {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - start  # imports and start-up included
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--examples", type=int, default=16)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:  # one measured process: the rest is a diffjax command line
        return child(argv[1:])
    args = p.parse_args(argv)
    work = args.workdir.absolute()
    model = work / "model"
    if not (model / "results.json").is_file():
        _process(["train", "--quiet", "--no-compilation-cache", "--config=train:mini",
                  "--workdir", str(model)])  # fmt: skip
    report = {}
    print("| attack | process | wall s | backend compile s | trace s | lower s |")
    print("|---|---|---|---|---|---|")
    for name, flags in ATTACKS.items():
        cache = work / f"cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        runs = []
        for i in (1, 2):
            out = work / f"{name}_{i}"
            shutil.rmtree(out, ignore_errors=True)
            runs.append(_process(["attack", "--quiet", "--compilation-cache", str(cache), *flags,
                                  f"--config.checkpoint={model}", "--config.dataset=synthetic",
                                  f"--config.num_examples={args.examples}",
                                  f"--config.batch_size={args.examples}", "--workdir", str(out)]))
            r = runs[-1]
            print(f"| {name} | {'first' if i == 1 else 'second'} | {r['process_wall_s']:.1f} | "
                  f"{r['compile_s']:.2f} | {r['trace_s']:.2f} | {r['lower_s']:.2f} |", flush=True)
        ratio = runs[1]["compile_s"] / runs[0]["compile_s"]
        report[name] = {"first": runs[0], "second": runs[1], "compile_ratio": ratio}
        print(f"| {name} | second / first | | {ratio:.1%} | | |")
    (work / "compile_cache.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
