"""Paper result (e): the depth crossover; ASR and CW ℓ2 against depth, measured ᾱ and bound.

    diffjax run depth --config=depth:mini
    diffjax run depth --config=depth:cpu

For D ∈ {1, 2, 4, 8, 12}, a ViT and a DiffViT of depth D from the shared zoo (same recipe, data
and seeds at every depth). For each: clean accuracy; PGD-ℓ∞ ASR at ε = 1/255 and 4/255; CW-L2
minimal perturbations and from them the ℓ2 needed for 100 % ASR (the largest minimal ‖δ‖₂ over
the initially correct examples, defined when CW fooled all of them); and the noise-cancellation
profile of :func:`diffjax.analysis.depth_profile` on a few test images: per-layer α and exact
block Lipschitz constants L_l, the paper's bound (ᾱ·L̄)^D and the measured amplification
‖Δ^(D)‖/‖ξ‖ of a small perturbation ξ of the embedded tokens (ᾱ is the mean α over DA layers;
softmax layers count as α = 1).

Writes results/depth/<preset>/results.json and summary.csv (resumable parts).
"""

from __future__ import annotations

import jax
import numpy as np

from diffjax import analysis as an
from diffjax import attacks, records
from diffjax.experiments.common import (
    Context,
    fmt,
    nan_to_none,
    pgd_asr,
    run_attack,
    write_results,
)
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import NAMES, Zoo
from diffjax.train import evaluate

MODELS = ("softmax", "diff")




def l2_for_full_asr(part: dict) -> float | None:
    """The ℓ2 budget at which CW's ASR reaches 100 %: the largest minimal ‖δ‖₂ over the
    initially correct examples; ``None`` when CW left one of them unfooled (or none was
    correct)."""
    correct = np.asarray(part["clean_correct"], bool)
    fooled = correct & ~np.asarray(part["adv_correct"], bool)
    if not correct.any() or np.any(correct & ~fooled):
        return None
    return float(np.max(np.asarray(part["l2"])[correct]))


def profile(model, images, seed: int, preset) -> dict:
    """Noise-cancellation profile of ``images`` [n, H, W, C] uint8: per-image arrays [n, D]."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        np.arange(len(images)))  # fmt: skip
    fn = jax.jit(jax.vmap(lambda x, k: an.depth_profile(
        model, x, key=k, radius=preset.radius, method="lanczos", max_iters=preset.max_iters,
        with_stack_lipschitz=False)))  # fmt: skip
    p = jax.device_get(fn(images.astype(np.float32) / 255.0, keys))
    out = {k: np.asarray(v).tolist() for k, v in vars(p).items() if k != "stack_lipschitz"}
    alpha = np.asarray(p.alpha)  # NaN for softmax layers
    lip = np.asarray(p.lipschitz)
    d = lip.shape[1]
    da = ~np.isnan(alpha)
    alpha_bar = np.where(da.any(1), np.nansum(alpha, 1) / np.maximum(da.sum(1), 1), 1.0)
    out["summary"] = {
        "alpha_bar": float(np.mean(alpha_bar)),
        "lipschitz_bar": float(np.mean(lip)),
        "paper_bound": float(np.mean(np.asarray(p.paper_bound)[:, d - 1])),
        "amplification": float(np.mean(np.asarray(p.amplification)[:, d - 1])),
        "amplification_finite": float(np.mean(np.asarray(p.amplification_finite)[:, d - 1])),
        "product_bound": float(np.mean(np.asarray(p.product_bound)[:, d - 1])),
        "bound_holds_fraction": float(np.mean(
            np.asarray(p.amplification_finite)[:, d - 1] <= np.asarray(p.paper_bound)[:, d - 1])),
    }  # fmt: skip
    return out


def run(config, ctx: Context) -> dict:
    preset = config
    zoo = Zoo(recipes.train_config(config.train), ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    train, test = zoo.data()

    def part(attention, depth, seed):
        model, summary, _ = zoo.model(train, test, attention, seed=seed, depth=depth)
        key = jax.random.key(seed)
        name = f"{NAMES[attention]} D={depth}"
        cw = run_attack(attacks.model_function(model), test.take(preset.cw_examples),
                        attacks.cw_l2, attacks.CWConfig(**preset.cw), key=key,
                        batch_size=preset.batch_size,
                        desc=f"CW {name}", quiet=ctx.quiet)  # fmt: skip
        return {
            "clean_accuracy": evaluate(model, test)["test_accuracy"],
            "train": summary,
            "pgd": pgd_asr(model, test.take(preset.attack_examples), preset.eps,
                           steps=preset.pgd_steps, key=key, batch_size=preset.batch_size,
                           desc=f"PGD {name}", quiet=ctx.quiet),
            "cw": {**cw, "l2_for_full_asr": l2_for_full_asr(cw)},
            "profile": profile(model, test.images[: preset.profile_examples], seed, preset),
        }  # fmt: skip

    runs, rows = {}, []
    for attention in MODELS:
        for depth in preset.depths:
            per_seed = [
                records.cached(
                    out_dir / "parts" / f"{NAMES[attention]}_d{depth}_s{seed}.json",
                    lambda a=attention, d=depth, s=seed: part(a, d, s),
                )  # fmt: skip
                for seed in preset.seeds
            ]
            runs[f"{NAMES[attention]}_d{depth}"] = per_seed
            row = {"model": NAMES[attention], "depth": depth, "seeds": len(per_seed)}
            acc = nan_to_none(records.mean_std_ci([p["clean_accuracy"] for p in per_seed]))
            row |= {"clean_accuracy_mean": acc["mean"], "clean_accuracy_std": acc["std"]}
            for i, eps in enumerate(preset.eps):
                asr = [p["pgd"][i]["summary"]["asr"] for p in per_seed]
                s = nan_to_none(records.mean_std_ci([a for a in asr if a is not None]))
                ci = per_seed[0]["pgd"][i]["summary"]["asr_ci"] or (None, None)
                row |= {f"asr_{eps * 255:g}_mean": s["mean"], f"asr_{eps * 255:g}_std": s["std"],
                        f"asr_{eps * 255:g}_seed0_ci_low": ci[0],
                        f"asr_{eps * 255:g}_seed0_ci_high": ci[1]}  # fmt: skip
            full = [p["cw"]["l2_for_full_asr"] for p in per_seed]
            row["cw_l2_for_full_asr_mean"] = (None if any(f is None for f in full)
                                              else float(np.mean(full)))  # fmt: skip
            med = [p["cw"]["summary"]["median_l2"] for p in per_seed]
            row["cw_median_l2_mean"] = (None if any(m is None for m in med)
                                        else float(np.mean(med)))  # fmt: skip
            for k in ("alpha_bar", "lipschitz_bar", "paper_bound", "amplification",
                      "amplification_finite", "bound_holds_fraction"):  # fmt: skip
                row[k] = float(np.mean([p["profile"]["summary"][k] for p in per_seed]))
            rows.append(row)
    crossover = {}
    for eps in preset.eps:
        k = f"asr_{eps * 255:g}_mean"
        gap = []
        for depth in preset.depths:
            v, d = (next(r[k] for r in rows if r["model"] == m and r["depth"] == depth)
                    for m in ("vit", "diffvit"))  # fmt: skip
            gap.append(None if v is None or d is None else d - v)
        crossover[f"{eps * 255:g}/255"] = {"depths": list(preset.depths),
                                           "diffvit_minus_vit_asr": gap}  # fmt: skip
    body = {"dataset": zoo.recipe.dataset, "runs": runs, "rows": rows, "crossover": crossover}
    result = write_results(out_dir, config, body, rows)
    e0, e1 = (f"{e * 255:g}" for e in preset.eps[:2])
    print(f"\nDepth study, {zoo.recipe.dataset} ({config.preset}; mean over "
          f"{len(preset.seeds)} seeds)")  # fmt: skip
    print(f"{'model':<9}{'D':>3}{'clean':>7}{'ASR ' + e0:>9}{'ASR ' + e1:>9}{'CW ℓ2 100%':>11}"
          f"{'ᾱ':>7}{'L̄':>7}{'(ᾱL̄)^D':>10}{'‖Δ‖/‖ξ‖':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<9}{r['depth']:>3}{fmt(r['clean_accuracy_mean']):>7}"
              f"{fmt(r[f'asr_{e0}_mean']):>9}{fmt(r[f'asr_{e1}_mean']):>9}"
              f"{fmt(r['cw_l2_for_full_asr_mean']):>11}{fmt(r['alpha_bar']):>7}"
              f"{fmt(r['lipschitz_bar']):>7}{fmt(r['paper_bound'], '.3g'):>10}"
              f"{fmt(r['amplification_finite'], '.3g'):>9}")  # fmt: skip
    print(f"results: {out_dir / 'results.json'}")
    return result

