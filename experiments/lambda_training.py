"""Paper result (f), the paper's first open question: how λ evolves during training, and what
local Lipschitz constants and ASR do along the way.

    diffjax run lambda_training --config=lambda_training:mini
    diffjax run lambda_training --config=lambda_training:cpu

Reads the shared zoo's training runs (ViT and DiffViT at the default depth, every seed): λ of
every DA layer at every logged training step (metrics.jsonl), and at every saved checkpoint
(one per evaluation): test accuracy, negative-alignment frequency and exact σmax of every
attention layer (:func:`diffjax.analysis.layer_summary`) and PGD-ℓ∞ ASR at ε. The ViT gives
the reference for the Lipschitz and ASR curves.

Writes results/lambda_training/<preset>/results.json and summary.csv (resumable parts, one per
checkpoint).
"""

from __future__ import annotations

import json
import pathlib

import jax

from diffjax import records
from diffjax.analysis import layer_summary
from diffjax.checkpoint import TrainCheckpoints, load_model
from diffjax.experiments.common import Context, fmt, pgd_asr, write_results
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import NAMES, Zoo
from diffjax.train import METRICS_FILE

MODELS = ("softmax", "diff")




def lambda_curve(run_dir: pathlib.Path) -> dict:
    """λ per DA layer at every logged training step: ``{"step": [T], "lambda": [T][L]}``."""
    steps, lams = [], []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train" and "lambda" in rec:
            steps.append(rec["step"])
            lams.append(rec["lambda"])
    return {"step": steps, "lambda": lams}


def run(config, ctx: Context) -> dict:
    preset = config
    zoo = Zoo(recipes.train_config(config.train), ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    train, test = zoo.data()

    def checkpoint_part(step_dir: pathlib.Path, metrics: dict, seed: int) -> dict:
        model = load_model(step_dir)
        key = jax.random.key(seed)
        layers = layer_summary(model, test.images[: preset.analysis_examples], key=key)
        pgd = pgd_asr(model, test.take(preset.attack_examples), (preset.eps,),
                      steps=preset.pgd_steps, key=key, batch_size=preset.batch_size,
                      quiet=ctx.quiet)[0]  # fmt: skip
        return {
            "test_accuracy": metrics["test_accuracy"],
            "epoch": metrics.get("epoch"),
            "lambda": [r["lambda"] for r in layers],
            "sigma_max_mean": [r["sigma_max_mean"] for r in layers],
            "negative_alignment": [r["negative_alignment"] for r in layers],
            "asr": pgd["summary"]["asr"],
            "asr_ci": pgd["summary"]["asr_ci"],
        }

    models, rows = {}, []
    for attention in MODELS:
        name = NAMES[attention]
        models[name] = []
        for seed in preset.seeds:
            # Trains the run first if it is missing (or unfinished).
            _, _, run_dir = zoo.model(train, test, attention, seed=seed)
            with TrainCheckpoints(run_dir, read_only=True) as ckpts:
                saved = [(s, ckpts.step_dir(s), ckpts.metrics(s)) for s in ckpts.steps()]
            points = []
            for step, step_dir, metrics in saved:
                if not metrics:
                    continue  # a mid-epoch checkpoint without test metrics
                point = records.cached(
                    out_dir / "parts" / f"{name}_s{seed}_step{step}.json",
                    lambda d=step_dir, m=metrics, s=seed: checkpoint_part(d, m, s),
                )
                points.append({"step": step, **point})
                rows.append({"model": name, "seed": seed, "step": step, "epoch": point["epoch"],
                             "test_accuracy": point["test_accuracy"], "asr": point["asr"],
                             **{f"lambda_l{i}": v for i, v in enumerate(point["lambda"])},
                             **{f"sigma_l{i}": v for i, v in enumerate(point["sigma_max_mean"])},
                             **{f"neg_align_l{i}": v
                                for i, v in enumerate(point["negative_alignment"])}})  # fmt: skip
            models[name].append({"seed": seed, "checkpoints": points,
                                 "lambda_curve": lambda_curve(run_dir)})  # fmt: skip
    body = {"dataset": zoo.recipe.dataset, "eps": preset.eps, "models": models}
    result = write_results(out_dir, config, body, rows)
    print(f"\nλ during training, {zoo.recipe.dataset} ({config.preset}; DiffViT seed "
          f"{preset.seeds[0]}; ASR at ε={preset.eps * 255:g}/255)")  # fmt: skip
    for pt in models["diffvit"][0]["checkpoints"]:
        lam = " ".join(fmt(v) for v in pt["lambda"])
        sig = " ".join(fmt(v) for v in pt["sigma_max_mean"])
        print(f"step {pt['step']:>6}  acc {fmt(pt['test_accuracy'])}  ASR {fmt(pt['asr'])}  "
              f"λ [{lam}]  σmax [{sig}]")  # fmt: skip
    print(f"results: {out_dir / 'results.json'}")
    return result

