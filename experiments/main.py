"""The main job: the whole pipeline on the embedded CIFAR-10 sample in a few minutes on a CPU.

    python -m experiments.main                 # train ViT and DiffViT, attack, analyse, report
    python -m experiments.main --quiet         # no progress bars

1. trains a ViT and a parameter-matched DiffViT (same seed, data and recipe) on the 5,000
   embedded training images;
2. measures clean accuracy on the 1,000 exact test images and attacks the first 200 with PGD-ℓ∞
   (20 steps) at ε ∈ {1, 2, 4, 8}/255, every adversarial example re-checked;
3. analyses 16 test images: per layer, the frequency of negative gradient alignment of the two
   branches (cos θ < 0, CLS row, w.r.t. the image; softmax heads paired 2h, 2h+1) and the exact
   local Lipschitz constant σmax of the attention layer (Lanczos);
4. prints a summary table, writes results/main/embedded/results.json and figures/main_embedded.png.

A rerun reuses the trained models (runs/main/) and finished parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import jax

from diffjax import records
from diffjax.analysis import layer_summary
from diffjax.checkpoint import write_json_atomic
from diffjax.config import ViTConfig
from diffjax.data import embedded_sample
from diffjax.train import TrainConfig, evaluate
from experiments import figures
from experiments.common import fmt, pgd_asr, trained_model

EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
MODELS = {"vit": "softmax", "diffvit": "diff"}
NAMES = {"vit": "ViT", "diffvit": "DiffViT"}

# Small enough to train in about a minute per model on 2 CPU cores.
TRAIN = TrainConfig(
    model=ViTConfig(width=64, depth=3, num_heads=4, patch_size=4, mlp_ratio=2.0),
    dataset="embedded",
    epochs=12,
    batch_size=64,
    learning_rate=2e-3,
    warmup_epochs=1.0,
    eval_batch_size=500,
    eval_every_epochs=4,
    log_every_steps=20,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack-examples", type=int, default=200)
    p.add_argument("--analysis-examples", type=int, default=16)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--epochs", type=int, default=TRAIN.epochs)
    p.add_argument("--results", default="results")
    p.add_argument("--runs", default="runs")
    p.add_argument("--figures", default="figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("attack_examples", "analysis_examples", "pgd_steps", "epochs"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")

    print(f"devices: {jax.devices()}")
    train_data, test_data = embedded_sample("train"), embedded_sample("test")
    out_dir = pathlib.Path(args.results) / "main" / "embedded"
    settings = {"seed": args.seed, "attack_examples": args.attack_examples,
                "analysis_examples": args.analysis_examples, "pgd_steps": args.pgd_steps,
                "eps": list(EPS)}  # fmt: skip
    per_model = {}
    for name, attention in MODELS.items():
        config = dataclasses.replace(TRAIN, epochs=args.epochs, seed=args.seed,
                                     warmup_epochs=min(TRAIN.warmup_epochs, args.epochs / 2),
                                     model=TRAIN.model.replace(attention=attention))  # fmt: skip
        run_dir = pathlib.Path(args.runs) / "main" / f"{name}_seed{args.seed}_e{args.epochs}"

        def part(name=name, config=config, run_dir=run_dir):
            model, summary = trained_model(config, run_dir, train_data, test_data,
                                           f"train {NAMES[name]}", args.quiet)  # fmt: skip
            clean = evaluate(model, test_data)
            attacked = test_data.take(args.attack_examples)
            key = jax.random.key(args.seed)
            return {
                "train_config": dataclasses.asdict(config),
                "run_dir": str(run_dir),
                "train_img_per_s": summary["train_img_per_s"],
                "clean_accuracy": clean["test_accuracy"],
                "pgd": pgd_asr(
                    model,
                    attacked,
                    EPS,
                    steps=args.pgd_steps,
                    key=key,
                    desc=f"PGD {NAMES[name]}",
                    quiet=args.quiet,
                ),  # fmt: skip
                "layers": layer_summary(
                    model, test_data.images[: args.analysis_examples], key=key
                ),  # fmt: skip
            }

        tag = f"{name}_seed{args.seed}_e{args.epochs}_s{args.pgd_steps}_a{args.attack_examples}"
        per_model[name] = records.cached(out_dir / "parts" / f"{tag}.json", part)

    result = {"experiment": "main", "preset": "embedded", "settings": settings,
              "environment": records.environment(), "models": per_model,
              "data": "embedded CIFAR-10 sample: 5,000 JPEG-decoded training images, "
                      "1,000 exact test images"}  # fmt: skip
    write_json_atomic(out_dir / "results.json", result)
    rows = [
        {"model": n, "clean_accuracy": r["clean_accuracy"], "eps_255": round(a["eps"] * 255),
         "asr": a["summary"]["asr"]}
        for n, r in per_model.items()
        for a in r["pgd"]
    ]  # fmt: skip
    records.write_csv_atomic(out_dir / "summary.csv", rows)
    written = figures.make_figures(args.results, args.figures, preset="embedded")

    print("\nSummary (embedded CIFAR-10 sample; ASR over initially correct test images)")
    head = f"{'':<22}" + "".join(f"{NAMES[n]:>12}" for n in per_model)
    print(head)
    print(f"{'clean accuracy':<22}" + "".join(f"{fmt(r['clean_accuracy']):>12}"
                                              for r in per_model.values()))  # fmt: skip
    for i, eps in enumerate(EPS):
        print(f"{f'PGD-{args.pgd_steps} ASR ε={eps * 255:g}/255':<22}" + "".join(
            f"{fmt(r['pgd'][i]['summary']['asr']):>12}" for r in per_model.values()))  # fmt: skip
    depth = TRAIN.model.depth
    for layer in range(depth):
        print(f"{f'neg. alignment L{layer}':<22}" + "".join(
            f"{fmt(100 * r['layers'][layer]['negative_alignment'], '.1f') + '%':>12}"
            for r in per_model.values()))  # fmt: skip
    for layer in range(depth):
        print(f"{f'σmax attention L{layer}':<22}" + "".join(
            f"{fmt(r['layers'][layer]['sigma_max_mean'], '.4f'):>12}"
            for r in per_model.values()))  # fmt: skip
    print(f"\nresults: {out_dir / 'results.json'}")
    for path in written:
        print(f"figure: {path}")
    return result


if __name__ == "__main__":
    main()
