"""CLIP vs DiffCLIP: zero-shot accuracy and the paper's cosine-similarity PGD attack.

    python -m experiments.clip_compare --preset smoke        # seconds, synthetic data (tests)
    python -m experiments.clip_compare --preset cpu --data-dir ~/cifar
    python -m experiments.clip_compare --preset paper --clip-checkpoint models/clip_cc3m \
        --diffclip-checkpoint models/diffclip_cc3m --dataset tfds:imagenet2012 --class-names f.txt

`smoke` and `cpu` train both models from scratch (contrastive, captions from the CIFAR templates,
identical seeds and data) because the released weights cannot be downloaded offline; `paper`
loads checkpoints converted with `python -m experiments.convert_clip`. The attack perturbs an
image within an ℓ∞ ball to minimise cos(image embedding, embedding of its class's single prompt
"a photo of a {}."), and succeeds when the zero-shot prediction over those prompts changes.

Writes results/clip_compare/<preset>/results.json and summary.csv; trained models go to
runs/clip_compare/<preset>/<model>/ and are reused (an interrupted run resumes). The figure is
drawn by `python -m experiments.figures`.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import jax
import numpy as np
from flax import nnx

from diffjax import records
from diffjax.analysis import layer_summary
from diffjax.checkpoint import save_model, write_json_atomic
from diffjax.clip import (
    CIFAR_TEMPLATES,
    CLIP,
    IMAGENET_TEMPLATES,
    clip_preset,
    load_clip,
    zeroshot_accuracy,
    zeroshot_classifier,
)
from diffjax.clip.attack import DEFAULT_PROMPT, prompt_classifier, prompt_cosine_loss
from diffjax.clip.train import ContrastiveConfig, train_contrastive
from diffjax.data import Dataset, load_dataset
from experiments.common import pgd_asr

MODELS = ("clip", "diffclip")
LOSSES_FILE = "train_losses.json"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One scale of the experiment.

    Attributes:
      clip, diffclip: CLIP presets of the two models (same shapes; softmax vs DA).
      dataset: dataset name; train on its train split, evaluate and attack its test split.
      train_examples: train on the first n training images (``None``: all; 0: no training,
        checkpoints are required).
      eval_examples: zero-shot accuracy on the first n test images.
      attack_examples: attack the first n test images.
      eps: ℓ∞ budgets (pixel units on the [0, 1] scale).
      pgd_steps: PGD iterations per budget (step size 2.5·ε/steps, one random start).
      training: contrastive training hyper-parameters.
      templates: ``"cifar"`` (18 SLIP templates) or ``"imagenet"`` (7) for zero-shot accuracy.
      analysis_examples: per-layer alignment and exact σmax on the first n test images.
      seeds: model initialisation seeds (one trained pair per seed).
      batch_size: evaluation and attack batch size.
    """

    clip: str
    diffclip: str
    dataset: str
    train_examples: int | None
    eval_examples: int
    attack_examples: int
    eps: tuple[float, ...]
    pgd_steps: int
    training: ContrastiveConfig
    templates: str = "cifar"
    analysis_examples: int = 16
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 100


PRESETS = {
    "smoke": Preset(
        clip="tiny",
        diffclip="tiny_diff",
        dataset="synthetic",
        train_examples=64,
        eval_examples=32,
        attack_examples=8,
        eps=(4 / 255,),
        pgd_steps=2,
        training=ContrastiveConfig(steps=6, batch_size=16, warmup_steps=2, steps_per_call=3),
        analysis_examples=2,
        batch_size=8,
    ),
    "cpu": Preset(
        clip="cifar",
        diffclip="cifar_diff",
        dataset="cifar10",
        train_examples=None,
        eval_examples=1000,  # the exact test images 0..999 of the offline copy
        attack_examples=300,
        eps=(1 / 255, 2 / 255, 4 / 255),
        pgd_steps=10,
        training=ContrastiveConfig(steps=300, batch_size=64, warmup_steps=30, steps_per_call=50),
    ),
    "paper": Preset(
        clip="clip_b16",
        diffclip="diffclip_b16",
        dataset="tfds:imagenet2012",
        train_examples=0,
        eval_examples=10000,
        attack_examples=1000,
        eps=(1 / 255, 4 / 255),
        pgd_steps=20,
        training=ContrastiveConfig(),
        templates="imagenet",
        analysis_examples=32,
        batch_size=50,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.clip_compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    p.add_argument("--dataset", help="override the preset's dataset")
    p.add_argument("--data-dir", help="dataset directory (default: $DIFFJAX_DATA_DIR, cache)")
    p.add_argument("--test-split", default="test", help="split to evaluate and attack")
    p.add_argument("--class-names", help="text file, one class name per line (ImageNet)")
    p.add_argument("--clip-checkpoint", help="converted CLIP model directory (paper preset)")
    p.add_argument("--diffclip-checkpoint", help="converted DiffCLIP model directory")
    p.add_argument("--results", default="results", help="results root")
    p.add_argument("--runs", default="runs", help="trained-model root")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def load_data(preset: Preset, args) -> tuple[Dataset | None, Dataset]:
    name = args.dataset or preset.dataset
    kw = {}
    if name == "synthetic":
        kw = {"n": max(preset.train_examples or 0, preset.eval_examples, preset.attack_examples),
              "image_size": clip_preset(preset.clip).image_size}  # fmt: skip
    elif name.startswith("tfds:"):
        kw = {"image_size": clip_preset(preset.clip).image_size}
    train = None
    if preset.train_examples != 0:
        train = load_dataset(name, "train", args.data_dir, **kw)
        if preset.train_examples is not None:
            train = train.take(preset.train_examples)
    test = load_dataset(name, args.test_split, args.data_dir, **kw)
    if args.class_names:
        names = tuple(pathlib.Path(args.class_names).read_text().splitlines())
        if len(names) != test.num_classes:
            raise SystemExit(f"{args.class_names} has {len(names)} names, data {test.num_classes}")
        test = dataclasses.replace(test, class_names=names)
    return train, test


def get_model(
    which: str, seed: int, preset: Preset, args, train: Dataset | None
) -> tuple[CLIP, dict | None]:
    """The trained (or converted) model, loaded if it exists, else trained and saved; and its
    training-loss record (``None`` for converted checkpoints)."""
    checkpoint = getattr(args, f"{which}_checkpoint")
    if checkpoint:
        return load_clip(checkpoint), None
    run_dir = pathlib.Path(args.runs) / "clip_compare" / args.preset / f"{which}_seed{seed}"
    if (run_dir / "config.json").is_file() and (run_dir / LOSSES_FILE).is_file():
        return load_clip(run_dir), records.read_json(run_dir / LOSSES_FILE)
    if train is None:
        raise SystemExit(
            f"the {args.preset} preset evaluates released weights: convert them with "
            f"`python -m experiments.convert_clip` and pass --{which}-checkpoint DIR"
        )
    config = clip_preset(getattr(preset, which))
    if train.images.shape[1] != config.image_size:
        raise SystemExit(f"{which} expects {config.image_size}px images, data has "
                         f"{train.images.shape[1]}px")  # fmt: skip
    model = CLIP(config, rngs=nnx.Rngs(seed))
    training = dataclasses.replace(preset.training, seed=seed)
    losses = train_contrastive(model, train, CIFAR_TEMPLATES, training, progress=not args.quiet)
    save_model(run_dir, model)
    k = max(1, len(losses) // 10)
    loss_record = {
        "steps": len(losses),
        "first_tenth": float(np.mean(losses[:k])),
        "last_tenth": float(np.mean(losses[-k:])),
        "losses": losses.tolist(),
    }
    write_json_atomic(run_dir / LOSSES_FILE, loss_record)
    return model, loss_record


def evaluate(model: CLIP, test: Dataset, preset: Preset, seed: int, quiet: bool) -> dict:
    templates = CIFAR_TEMPLATES if preset.templates == "cifar" else IMAGENET_TEMPLATES
    names = test.class_names
    n_eval = min(preset.eval_examples, len(test))
    ensemble = zeroshot_accuracy(
        zeroshot_classifier(model, names, templates), test.images[:n_eval],
        test.labels[:n_eval], preset.batch_size)  # fmt: skip
    classifier = prompt_classifier(model, names, DEFAULT_PROMPT)
    single = zeroshot_accuracy(classifier, test.images[:n_eval], test.labels[:n_eval],
                               preset.batch_size)  # fmt: skip
    n_att = min(preset.attack_examples, len(test))
    out = {"zeroshot_accuracy": ensemble, "single_prompt_accuracy": single,
           "eval_examples": n_eval}  # fmt: skip
    out["attacks"] = pgd_asr(
        classifier, test.take(n_att), preset.eps, steps=preset.pgd_steps, key=jax.random.key(seed),
        batch_size=preset.batch_size, loss=prompt_cosine_loss, quiet=quiet,
    )  # fmt: skip
    # Image tower through the zero-shot head: the ViT analysis applies unchanged.
    n_an = min(preset.analysis_examples, len(test))
    out["layers"] = layer_summary(classifier, test.images[:n_an], key=jax.random.key(seed),
                                  batch_size=min(8, n_an))  # fmt: skip
    return out


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    train, test = load_data(preset, args)
    out_dir = pathlib.Path(args.results) / "clip_compare" / args.preset
    per_model = {}
    for which in MODELS:
        for seed in preset.seeds:
            name = f"{which}_seed{seed}"

            def run(which=which, seed=seed):
                model, losses = get_model(which, seed, preset, args, train)
                res = evaluate(model, test, preset, seed, args.quiet)
                res["training"] = None if losses is None else {
                    k: v for k, v in losses.items() if k != "losses"}  # fmt: skip
                return res

            per_model[name] = records.cached(out_dir / "parts" / f"{name}.json", run)
    rows = []
    for name, res in per_model.items():
        for a in res["attacks"]:
            s = a["summary"]
            ci = s["asr_ci"] or (None, None)
            rows.append(
                {
                    "model": name.split("_seed")[0],
                    "seed": name.split("_seed")[1],
                    "zeroshot_accuracy": res["zeroshot_accuracy"],
                    "single_prompt_accuracy": res["single_prompt_accuracy"],
                    "eps": a["eps"],
                    "eps_255": round(a["eps"] * 255, 3),
                    "asr": s["asr"],
                    "asr_ci_low": ci[0],
                    "asr_ci_high": ci[1],
                    "clean_correct": s["clean_correct"],
                    "examples": s["examples"],
                }
            )
    result = {"experiment": "clip_compare", "preset": args.preset,
              "config": dataclasses.asdict(preset), "environment": records.environment(),
              "dataset": args.dataset or preset.dataset, "models": per_model}  # fmt: skip
    write_json_atomic(out_dir / "results.json", result)
    records.write_csv_atomic(out_dir / "summary.csv", rows)
    print(f"\nCLIP vs DiffCLIP ({args.preset}):")
    print(f"{'model':<10}{'zero-shot':>10}{'eps/255':>9}{'ASR':>8}")
    for r in rows:
        asr = "n/a" if r["asr"] is None else f"{r['asr']:.3f}"
        print(f"{r['model']:<10}{r['zeroshot_accuracy']:>10.3f}{r['eps_255']:>9}{asr:>8}")
    print(f"results: {out_dir / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
