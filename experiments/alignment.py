"""Paper result (c): gradient alignment of the two attention branches, per layer, ViT vs DiffViT.

    diffjax run alignment --config=alignment:mini
    diffjax run alignment --config=alignment:cpu

For each zoo model (ViT, DiffViT; every seed) and layer: cos θ between the Jacobians of the two
branches' CLS rows with respect to the input image, one value per (test image, head). DA
branches are A1 and A2 of each DIFF head; the ViT's "branches" are its heads paired (2h, 2h+1),
exactly as DA pairs its sub-heads (docs/analysis.md). Reported: the frequency of negative
alignment (cos θ < 0) per layer (mean ± std over seeds), ρ = ‖J2‖/‖J1‖, λ, and cos θ histograms.

Writes results/alignment/<preset>/results.json and summary.csv (resumable parts).
"""

from __future__ import annotations

import jax
import numpy as np

from diffjax import records
from diffjax.analysis import layer_summary
from diffjax.experiments.common import Context, fmt, nan_to_none, seed_parts, write_results
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import NAMES, Zoo

MODELS = ("softmax", "diff")
BINS = np.linspace(-1.0, 1.0, 41)  # cos θ histogram edges




def histogram(cos) -> list[int]:
    """Counts of cos θ values (NaN dropped) in the 40 bins of ``BINS``."""
    c = np.asarray(cos, float).ravel()
    return np.histogram(c[~np.isnan(c)], BINS)[0].tolist()


def run(config, ctx: Context) -> dict:
    preset = config
    zoo = Zoo(recipes.train_config(config.train), ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    train, test = zoo.data()

    def part(attention, seed):
        model, _, _ = zoo.model(train, test, attention, seed=seed)
        images = test.images[: preset.examples]
        row = None if preset.row < 0 else preset.row
        return layer_summary(model, images, key=jax.random.key(seed), row=row,
                             wrt=preset.wrt, batch_size=preset.batch_size)  # fmt: skip

    models, rows = {}, []
    for attention in MODELS:
        name = NAMES[attention]
        per_seed = seed_parts(out_dir, name, preset.seeds, lambda s, a=attention: part(a, s))
        layers = []
        for layer in range(len(per_seed[0])):
            per = [p[layer] for p in per_seed]
            freq = nan_to_none(records.mean_std_ci([r["negative_alignment"] for r in per]))
            cos = np.concatenate([np.ravel(r["cos"]) for r in per])
            rho = np.concatenate([np.ravel(r["rho"]) for r in per])
            row = {
                "model": name,
                "layer": layer,
                "negative_alignment_mean": freq["mean"],
                "negative_alignment_std": freq["std"],
                "negative_alignment_ci95": freq["ci"],
                "cos_median": float(np.nanmedian(cos)),
                "rho_median": float(np.nanmedian(rho)),
                "lambda_mean": None if per[0]["lambda"] is None
                else float(np.mean([r["lambda"] for r in per])),
                "values": int(np.sum(~np.isnan(cos))),
                "seeds": len(per),
            }  # fmt: skip
            rows.append(row)
            layers.append({**row, "per_seed": [r["negative_alignment"] for r in per],
                           "histogram": histogram(cos)})  # fmt: skip
        models[name] = {"layers": layers, "per_seed": per_seed}
    body = {"dataset": zoo.recipe.dataset, "bins": BINS.tolist(), "models": models}
    result = write_results(out_dir, config, body, rows)
    print(f"\nNegative gradient alignment, {zoo.recipe.dataset} ({config.preset}; fraction of "
          f"(image, head) with cos θ < 0, mean ± std over {len(preset.seeds)} seeds)")  # fmt: skip
    print(f"{'layer':<8}{'ViT':>18}{'DiffViT':>18}")
    for lv, ld in zip(models["vit"]["layers"], models["diffvit"]["layers"], strict=True):
        cell = lambda r: f"{fmt(r['negative_alignment_mean'])} ± {fmt(r['negative_alignment_std'])}"  # noqa: E731
        print(f"{lv['layer']:<8}{cell(lv):>18}{cell(ld):>18}")
    print(f"results: {out_dir / 'results.json'}")
    return result

