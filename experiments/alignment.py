"""Paper result (c): gradient alignment of the two attention branches, per layer, ViT vs DiffViT.

    python -m experiments.alignment --preset smoke
    python -m experiments.alignment --preset cpu --data-dir DIR

For each zoo model (ViT, DiffViT; every seed) and layer: cos θ between the Jacobians of the two
branches' CLS rows with respect to the input image, one value per (test image, head). DA
branches are A1 and A2 of each DIFF head; the ViT's "branches" are its heads paired (2h, 2h+1),
exactly as DA pairs its sub-heads (README, "Exact sensitivity analysis"). Reported: the
frequency of negative alignment (cos θ < 0) per layer (mean ± std over seeds), ρ = ‖J2‖/‖J1‖,
λ, and cos θ histograms.

Writes results/alignment/<preset>/results.json and summary.csv (resumable parts).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from diffjax import records
from diffjax.analysis import layer_summary
from experiments.common import fmt, nan_to_none, seed_parts, write_results
from experiments.zoo import NAMES, start

MODELS = ("softmax", "diff")
BINS = np.linspace(-1.0, 1.0, 41)  # cos θ histogram edges


@dataclasses.dataclass(frozen=True)
class Preset:
    """One scale of the alignment measurement.

    Attributes:
      dataset: dataset of the zoo models.
      seeds: zoo seeds.
      examples: the first n test images are analysed.
      row: query row differentiated (0 = CLS; ``None``: all rows).
      wrt: ``"image"``, ``"block_input"`` or ``"attention_input"``.
      batch_size: images per jitted call.
    """

    dataset: str
    seeds: tuple[int, ...]
    examples: int
    row: int | None = 0
    wrt: str = "image"
    batch_size: int = 8


PRESETS = {
    "smoke": Preset("synthetic", (0,), 4, batch_size=4),
    "cpu": Preset("cifar10", (0, 1, 2), 64),
    "paper": Preset("cifar10", (0, 1, 2), 1000, batch_size=50),
}


def histogram(cos) -> list[int]:
    """Counts of cos θ values (NaN dropped) in the 40 bins of ``BINS``."""
    c = np.asarray(cos, float).ravel()
    return np.histogram(c[~np.isnan(c)], BINS)[0].tolist()


def main(argv=None) -> dict:
    args, preset, zoo, out_dir, train, test = start("alignment", __doc__, PRESETS, argv)

    def part(attention, seed):
        model, _ = zoo.model(preset.dataset, train, test, attention, seed=seed, runs=args.runs,
                             quiet=args.quiet)  # fmt: skip
        images = test.images[: preset.examples]
        return layer_summary(model, images, key=jax.random.key(seed), row=preset.row,
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
    body = {"dataset": preset.dataset, "bins": BINS.tolist(), "models": models}
    result = write_results(out_dir, "alignment", args.preset, preset, body, rows)
    print(f"\nNegative gradient alignment, {preset.dataset} ({args.preset}; fraction of "
          f"(image, head) with cos θ < 0, mean ± std over {len(preset.seeds)} seeds)")  # fmt: skip
    print(f"{'layer':<8}{'ViT':>18}{'DiffViT':>18}")
    for lv, ld in zip(models["vit"]["layers"], models["diffvit"]["layers"], strict=True):
        cell = lambda r: f"{fmt(r['negative_alignment_mean'])} ± {fmt(r['negative_alignment_std'])}"  # noqa: E731
        print(f"{lv['layer']:<8}{cell(lv):>18}{cell(ld):>18}")
    print(f"results: {out_dir / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
