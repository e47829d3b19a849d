"""CLIP vs DiffCLIP: zero-shot accuracy and the paper's cosine-similarity PGD attack.

    diffjax run clip_compare --config=clip_compare:mini     # test size, synthetic data
    diffjax run clip_compare --config=clip_compare:cpu --data-dir ~/cifar
    diffjax run clip_compare --config=clip_compare:paper \
        --config.clip_checkpoint=models/clip_cc3m \
        --config.diffclip_checkpoint=models/diffclip_cc3m --config.class_names=classes.txt

`mini` and `cpu` train both models from scratch (contrastive, captions from the CIFAR templates,
identical seeds and data) because the released weights cannot be downloaded offline; `paper`
loads checkpoints converted with `diffjax convert-clip`. Any preset evaluates a converted
checkpoint instead of training when `clip_checkpoint` / `diffclip_checkpoint` names one (an
OpenAI / open_clip CLIP too: `--config.models=clip --config.clip_checkpoint=models/openai_b16`;
`models` is the comma-separated subset of clip, diffclip to run). The attack perturbs an
image within an ℓ∞ ball to minimise cos(image embedding, embedding of its class's single prompt
"a photo of a {}."), and succeeds when the zero-shot prediction over those prompts changes.

Writes results/clip_compare/<preset>/results.json and summary.csv; trained models go to
runs/clip_compare/<preset>/<model>/ and are reused (an interrupted run resumes); the figure goes
to figures/clip_compare_<preset>.{png,pdf}.
"""

from __future__ import annotations

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
    read_clip_config,
    zeroshot_accuracy,
    zeroshot_classifier,
)
from diffjax.clip.attack import DEFAULT_PROMPT, prompt_classifier, prompt_cosine_loss
from diffjax.clip.train import ContrastiveConfig, train_contrastive
from diffjax.data import Dataset, load_dataset
from diffjax.experiments.common import Context, pgd_asr, write_results

MODELS = ("clip", "diffclip")
LOSSES_FILE = "train_losses.json"


def models(preset) -> tuple[str, ...]:
    """The compared models named by ``preset.models`` (comma-separated, from :data:`MODELS`)."""
    names = tuple(m for m in preset.models.split(",") if m)
    bad = sorted(set(names) - set(MODELS))
    if not names or bad:
        raise ValueError(f"models must be a comma-separated subset of {MODELS}, got "
                         f"{preset.models!r}")  # fmt: skip
    return names


def image_size(preset) -> int:
    """The input size: the first model's checkpoint's (a converted one), else its preset's."""
    which = models(preset)[0]
    checkpoint = getattr(preset, f"{which}_checkpoint")
    config = read_clip_config(checkpoint) if checkpoint else clip_preset(getattr(preset, which))
    return config.image_size


def load_data(preset, ctx: Context) -> tuple[Dataset | None, Dataset]:
    name = preset.dataset
    kw = {"download": not ctx.offline}
    if name == "synthetic":
        kw |= {"n": max(preset.train_examples, preset.eval_examples, preset.attack_examples),
               "image_size": image_size(preset)}  # fmt: skip
    elif name.startswith("tfds:"):
        kw |= {"image_size": image_size(preset)}
    train = None
    if preset.train_examples != 0 and not all(
        getattr(preset, f"{which}_checkpoint") for which in models(preset)
    ):
        train = load_dataset(name, "train", ctx.data_dir, **kw)
        if preset.train_examples > 0:
            train = train.take(preset.train_examples)
    test = load_dataset(name, preset.test_split, ctx.data_dir, **kw)
    if preset.class_names:
        test = test.renamed(preset.class_names)
    return train, test


def get_model(
    which: str, seed: int, preset, ctx: Context, train: Dataset | None
) -> tuple[CLIP, dict | None]:
    """The trained (or converted) model, loaded if it exists, else trained and saved; and its
    training-loss record (``None`` for converted checkpoints)."""
    checkpoint = getattr(preset, f"{which}_checkpoint")
    if checkpoint:
        return load_clip(checkpoint), None
    run_dir = ctx.runs / "clip_compare" / preset.preset / f"{which}_seed{seed}"
    if (run_dir / "config.json").is_file() and (run_dir / LOSSES_FILE).is_file():
        return load_clip(run_dir), records.read_json(run_dir / LOSSES_FILE)
    if train is None:
        raise ValueError(
            f"the {preset.preset} preset evaluates released weights: convert them with "
            f"`diffjax convert-clip` and pass --config.{which}_checkpoint=DIR"
        )
    config = clip_preset(getattr(preset, which))
    if train.images.shape[1] != config.image_size:
        raise ValueError(f"{which} expects {config.image_size}px images, data has "
                         f"{train.images.shape[1]}px")  # fmt: skip
    model = CLIP(config, rngs=nnx.Rngs(seed))
    training = ContrastiveConfig(**preset.training.to_dict(), seed=seed)
    # Event files beside the model directory, which save_model replaces whole.
    logdir = run_dir.parent / "tensorboard" / run_dir.name
    losses = train_contrastive(model, train, CIFAR_TEMPLATES, training, progress=not ctx.quiet,
                               logdir=logdir)  # fmt: skip
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


def evaluate(model: CLIP, test: Dataset, preset, seed: int, quiet: bool) -> dict:
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


def run(config, ctx: Context) -> dict:
    """CLIP vs DiffCLIP as ``config`` (``configs/clip_compare.py``) says; the results dict."""
    preset = config
    train, test = load_data(preset, ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    per_model = {}
    for which in models(preset):
        for seed in preset.seeds:
            name = f"{which}_seed{seed}"

            def part(which=which, seed=seed):
                model, losses = get_model(which, seed, preset, ctx, train)
                res = evaluate(model, test, preset, seed, ctx.quiet)
                res["training"] = None if losses is None else {
                    k: v for k, v in losses.items() if k != "losses"}  # fmt: skip
                return res

            per_model[name] = records.cached(out_dir / "parts" / f"{name}.json", part)
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
    result = write_results(out_dir, config, {"dataset": preset.dataset, "models": per_model}, rows)
    print(f"\nCLIP vs DiffCLIP ({config.preset}):")
    print(f"{'model':<10}{'zero-shot':>10}{'eps/255':>9}{'ASR':>8}")
    for r in rows:
        asr = "n/a" if r["asr"] is None else f"{r['asr']:.3f}"
        print(f"{r['model']:<10}{r['zeroshot_accuracy']:>10.3f}{r['eps_255']:>9}{asr:>8}")
    print(f"results: {out_dir / 'results.json'}")
    return result

