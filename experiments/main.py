"""The main job: the whole pipeline on the embedded CIFAR-10 sample in a few minutes on a CPU.

    diffjax run main                      # train ViT and DiffViT, attack, analyse, report
    diffjax run main --config=main:mini  # the test size (minutes: mostly compilation)

1. trains a ViT and a parameter-matched DiffViT (same seed, data and recipe: the ``embedded``
   recipe of ``experiments/configs/recipes.py``) on the 5,000 embedded training images;
2. measures clean accuracy on the 1,000 exact test images and attacks the first 200 with PGD-ℓ∞
   (20 steps) at ε ∈ {1, 2, 4, 8}/255, every adversarial example re-checked;
3. analyses 16 test images: per layer, the frequency of negative gradient alignment of the two
   branches (cos θ < 0, CLS row, w.r.t. the image; softmax heads paired 2h, 2h+1) and the exact
   local Lipschitz constant σmax of the attention layer (Lanczos);
4. prints a summary table, writes results/main/<preset>/results.json and (``diffjax run``)
   figures/main_<preset>.{png,pdf} under the workdir.

A rerun reuses the trained models (runs/zoo/embedded/) and finished parts.
"""

from __future__ import annotations

import jax

from diffjax import records
from diffjax.analysis import layer_summary
from diffjax.experiments.common import Context, fmt, pgd_asr, write_results
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import Zoo
from diffjax.train import evaluate

MODELS = {"vit": "softmax", "diffvit": "diff"}
NAMES = {"vit": "ViT", "diffvit": "DiffViT"}


def run(config, ctx: Context) -> dict:
    """The main job of ``config`` (``experiments/configs/main.py``); its results dict."""
    zoo = Zoo(recipes.train_config(config.train), ctx)
    train_data, test_data = zoo.data()
    out_dir = ctx.results(config.experiment, config.preset)
    per_model = {}
    for name, attention in MODELS.items():

        def part(name=name, attention=attention):
            model, summary, _ = zoo.model(train_data, test_data, attention, seed=config.seed)
            attacked = test_data.take(config.attack_examples)
            key = jax.random.key(config.seed)
            return {
                "run": summary["run"],
                "train_img_per_s": summary["train_img_per_s"],
                "clean_accuracy": evaluate(model, test_data)["test_accuracy"],
                "pgd": pgd_asr(model, attacked, config.eps, steps=config.pgd_steps, key=key,
                               desc=f"PGD {NAMES[name]}", quiet=ctx.quiet),
                "layers": layer_summary(model, test_data.images[: config.analysis_examples],
                                        key=key),
            }  # fmt: skip

        per_model[name] = records.cached(out_dir / "parts" / f"{name}.json", part)

    rows = [
        {"model": n, "clean_accuracy": r["clean_accuracy"], "eps_255": round(a["eps"] * 255),
         "asr": a["summary"]["asr"]}
        for n, r in per_model.items()
        for a in r["pgd"]
    ]  # fmt: skip
    data = ("embedded CIFAR-10 sample: 5,000 JPEG-decoded training images, 1,000 exact test "
            "images") if config.train.dataset == "embedded" else config.train.dataset  # fmt: skip
    body = {"models": per_model, "data": data}
    result = write_results(out_dir, config, body, rows)

    print(f"\nSummary ({data}; ASR over initially correct test images)")
    print(summary_table(result))
    print(f"\nresults: {out_dir / 'results.json'}")
    return result


def summary_table(result: dict) -> str:
    """The main job's summary table (what ``diffjax run main`` prints) from its results dict
    (``results.json``): clean accuracy, PGD ASR per ε, and per layer the negative-alignment
    frequency and σmax, one column per model."""
    c = result["config"]
    models = {n: result["models"][n] for n in MODELS}  # ViT first (results.json sorts keys)
    steps, depth = c["pgd_steps"], c["train"]["model"]["depth"]
    lines = [f"{'':<22}" + "".join(f"{NAMES[n]:>12}" for n in models),
             f"{'clean accuracy':<22}" + "".join(f"{fmt(r['clean_accuracy']):>12}"
                                                 for r in models.values())]  # fmt: skip
    for i, eps in enumerate(c["eps"]):
        lines.append(f"{f'PGD-{steps} ASR ε={eps * 255:g}/255':<22}" + "".join(
            f"{fmt(r['pgd'][i]['summary']['asr']):>12}" for r in models.values()))  # fmt: skip
    for layer in range(depth):
        lines.append(f"{f'neg. alignment L{layer}':<22}" + "".join(
            f"{fmt(100 * r['layers'][layer]['negative_alignment'], '.1f') + '%':>12}"
            for r in models.values()))  # fmt: skip
    for layer in range(depth):
        lines.append(f"{f'σmax attention L{layer}':<22}" + "".join(
            f"{fmt(r['layers'][layer]['sigma_max_mean'], '.4f'):>12}"
            for r in models.values()))  # fmt: skip
    return "\n".join(lines)
