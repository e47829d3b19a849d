"""Paper result (d): local Lipschitz constants of every attention layer, ViT vs DiffViT.

    diffjax run lipschitz --config=lipschitz:mini
    diffjax run lipschitz --config=lipschitz:cpu

For each zoo model (ViT, DiffViT; every seed), layer and test image, the attention layer's local
Lipschitz constant at its input u = LN1(h_l), three ways
(:func:`diffjax.analysis.layer_lipschitz`):

* exact: σmax(∂attn/∂u) by Lanczos, with its residual bound;
* sampled (the paper's estimator): max ‖attn(u+ξ) − attn(u)‖/‖ξ‖ over random ξ, ‖ξ‖ ≤ r;
* PGD: that ratio maximised over ‖ξ‖ = r (Yang et al. 2020) — both empirical values are lower
  bounds of the exact one.

Reported per layer: means over images (mean ± std over seeds), the DiffViT/ViT ratio of the
exact constants, and λ per DA layer (the paper: peaks in layers with larger λ).

Writes results/lipschitz/<preset>/results.json and summary.csv (resumable parts).
"""

from __future__ import annotations

import jax
import numpy as np
import scipy.stats

from diffjax import records
from diffjax.analysis import layer_lipschitz
from diffjax.experiments.common import Context, fmt, nan_to_none, seed_parts, write_results
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import NAMES, Zoo

MODELS = ("softmax", "diff")
KINDS = ("exact", "sampled", "pgd")




def lambda_correlation(models: dict) -> dict:
    """Spearman rank correlation, over (seed, DA layer) pairs, of λ with the DiffViT's mean
    exact constant and with its ratio to the ViT of the same seed and layer (the paper: the
    Lipschitz peaks are in the layers with larger λ)."""
    lam, exact, ratio = [], [], []
    for d_seed, v_seed in zip(models["diffvit"]["per_seed"], models["vit"]["per_seed"],
                              strict=True):  # fmt: skip
        for d, v in zip(d_seed, v_seed, strict=True):
            if d["lambda"] is not None:
                lam.append(d["lambda"])
                exact.append(float(np.mean(d["exact"])))
                ratio.append(float(np.mean(d["exact"]) / np.mean(v["exact"])))
    if len(lam) < 3:
        return {"pairs": len(lam), "exact": None, "ratio": None}
    out = {"pairs": len(lam)}
    for name, values in (("exact", exact), ("ratio", ratio)):
        r = scipy.stats.spearmanr(lam, values)
        out[name] = {"spearman": float(r.statistic), "p_value": float(r.pvalue)}
    return out


def run(config, ctx: Context) -> dict:
    preset = config
    zoo = Zoo(recipes.train_config(config.train), ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    train, test = zoo.data()

    def part(attention, seed):
        model, _, _ = zoo.model(train, test, attention, seed=seed)
        layers = layer_lipschitz(
            model, test.images[: preset.examples], key=jax.random.key(seed),
            radius=preset.radius, samples=preset.samples, pgd_steps=preset.pgd_steps,
            batch_size=preset.batch_size, max_iters=preset.max_iters,
        )  # fmt: skip
        lambdas = model.lambdas()
        return [{**r, "lambda": lam} for r, lam in zip(layers, lambdas, strict=True)]

    models, rows = {}, []
    for attention in MODELS:
        name = NAMES[attention]
        per_seed = seed_parts(out_dir, name, preset.seeds, lambda s, a=attention: part(a, s))
        layers = []
        for layer in range(len(per_seed[0])):
            per = [p[layer] for p in per_seed]
            row = {"model": name, "layer": layer, "seeds": len(per),
                   "lambda_mean": None if per[0]["lambda"] is None
                   else float(np.mean([r["lambda"] for r in per]))}  # fmt: skip
            for kind in KINDS:
                s = nan_to_none(records.mean_std_ci([np.mean(r[kind]) for r in per]))
                row |= {f"{kind}_mean": s["mean"], f"{kind}_std": s["std"],
                        f"{kind}_ci95": s["ci"]}  # fmt: skip
            row["exact_max"] = float(max(np.max(r["exact"]) for r in per))
            row["bound_max"] = float(max(np.max(r["bound"]) for r in per))
            ratios = np.concatenate([np.asarray(r["pgd"]) / np.asarray(r["exact"]) for r in per])
            row["pgd_over_exact_median"] = float(np.median(ratios))
            ratios = np.concatenate(
                [np.asarray(r["sampled"]) / np.asarray(r["exact"]) for r in per]
            )
            row["sampled_over_exact_median"] = float(np.median(ratios))
            rows.append(row)
            layers.append(row)
        models[name] = {"layers": layers, "per_seed": per_seed}
    pairs = list(zip(models["vit"]["layers"], models["diffvit"]["layers"], strict=True))
    ratio = [d["exact_mean"] / v["exact_mean"] for v, d in pairs]
    body = {"dataset": zoo.recipe.dataset, "models": models, "diffvit_over_vit_exact": ratio,
            "lambda_correlation": lambda_correlation(models)}  # fmt: skip
    result = write_results(out_dir, config, body, rows)
    print(f"\nLocal Lipschitz constant of the attention layers, {zoo.recipe.dataset} "
          f"({config.preset}; "
          f"mean over images, mean over {len(preset.seeds)} seeds)")  # fmt: skip
    print(f"{'layer':<7}{'ViT exact':>11}{'sampled':>9}{'PGD':>8}{'DiffViT exact':>15}"
          f"{'sampled':>9}{'PGD':>8}{'ratio':>7}{'λ':>7}")  # fmt: skip
    for (v, d), r in zip(pairs, ratio, strict=True):
        print(f"{v['layer']:<7}{fmt(v['exact_mean']):>11}{fmt(v['sampled_mean']):>9}"
              f"{fmt(v['pgd_mean']):>8}{fmt(d['exact_mean']):>15}{fmt(d['sampled_mean']):>9}"
              f"{fmt(d['pgd_mean']):>8}{fmt(r, '.2f'):>7}{fmt(d['lambda_mean']):>7}")  # fmt: skip
    c = body["lambda_correlation"]
    if c["exact"] is not None:
        print(
            f"λ vs DiffViT exact constant over {c['pairs']} (seed, layer) pairs: Spearman "
            f"{c['exact']['spearman']:.2f} (p = {c['exact']['p_value']:.2g}); λ vs the "
            f"DiffViT/ViT ratio: {c['ratio']['spearman']:.2f} (p = {c['ratio']['p_value']:.2g})"
        )
    print(f"results: {out_dir / 'results.json'}")
    return result

