"""Regenerate every figure in figures/ from saved results alone (no model is run).

    python -m experiments.figures                    # every results/<experiment>/<preset>/
    python -m experiments.figures --preset cpu       # one preset

Each experiment with saved results gets figures/<experiment>_<preset>.png.
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import records  # noqa: E402

COLORS = {"vit": "tab:blue", "clip": "tab:blue", "diffvit": "tab:red", "diffclip": "tab:red"}
LABELS = {"vit": "ViT", "diffvit": "DiffViT", "clip": "CLIP", "diffclip": "DiffCLIP"}


def _asr_errorbar(ax, eps255, asr, lo, hi, name):
    asr, lo, hi = (np.array([np.nan if v is None else v for v in x], float) for x in (asr, lo, hi))
    # Undefined rates (nothing classified correctly) draw as gaps without error bars.
    yerr = np.clip(np.nan_to_num(np.stack([asr - lo, hi - asr])), 0, None)
    ax.errorbar(eps255, asr, yerr=yerr, marker="o", capsize=3,
                color=COLORS.get(name), label=LABELS.get(name, name))  # fmt: skip


def clip_compare(result: dict, path: pathlib.Path) -> None:
    """ASR vs ε (95 % Wilson intervals), zero-shot accuracy and per-layer negative alignment."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
    accs = {}
    for run, res in result["models"].items():
        name = run.split("_seed")[0]
        att = res["attacks"]
        eps = [a["eps"] * 255 for a in att]
        s = [a["summary"] for a in att]
        ci = [x["asr_ci"] or (None, None) for x in s]
        _asr_errorbar(ax1, eps, [x["asr"] for x in s], [c[0] for c in ci], [c[1] for c in ci],
                      name)  # fmt: skip
        accs.setdefault(name, []).append(res["zeroshot_accuracy"])
        layers = res.get("layers") or []
        ax3.plot([r["layer"] for r in layers], [r["negative_alignment"] for r in layers],
                 marker="o", color=COLORS.get(name), label=LABELS.get(name, name))  # fmt: skip
    ax1.set_xlabel("PGD ℓ∞ budget ε (×1/255)")
    ax1.set_ylabel("attack success rate")
    ax1.set_ylim(0, 1.02)
    ax1.set_title("cosine-similarity PGD")
    ax1.legend()
    names = list(accs)
    ax2.bar([LABELS.get(n, n) for n in names], [np.mean(accs[n]) for n in names],
            color=[COLORS.get(n) for n in names])  # fmt: skip
    ax2.set_ylabel("zero-shot accuracy")
    ax2.set_ylim(0, 1)
    ax2.set_title(f"zero-shot, {result['dataset']}")
    ax3.set_xlabel("image-tower layer (0-based)")
    ax3.set_ylabel("fraction with cos θ < 0")
    ax3.set_ylim(0, 1)
    ax3.set_title("negative gradient alignment (CLS row)")
    ax3.legend()
    fig.suptitle(f"CLIP vs DiffCLIP ({result['preset']} preset)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def vit_compare(result: dict, path: pathlib.Path) -> None:
    """ViT vs DiffViT: PGD ASR vs ε (95 % Wilson), negative alignment and σmax per layer."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, res in result["models"].items():
        s = [a["summary"] for a in res["pgd"]]
        ci = [x["asr_ci"] or (None, None) for x in s]
        _asr_errorbar(ax1, [a["eps"] * 255 for a in res["pgd"]], [x["asr"] for x in s],
                      [c[0] for c in ci], [c[1] for c in ci], name)  # fmt: skip
        layers = res["layers"]
        kw = dict(marker="o", color=COLORS.get(name), label=LABELS.get(name, name))
        ax2.plot([r["layer"] for r in layers], [r["negative_alignment"] for r in layers], **kw)
        ax3.plot([r["layer"] for r in layers], [r["sigma_max_mean"] for r in layers], **kw)
    ax1.set(xlabel="PGD ℓ∞ budget ε (×1/255)", ylabel="attack success rate", ylim=(0, 1.02),
            title="PGD attack success")  # fmt: skip
    ax2.set(xlabel="layer (0-based)", ylabel="fraction with cos θ < 0", ylim=(0, 1),
            title="negative gradient alignment")  # fmt: skip
    ax3.set(xlabel="layer (0-based)", ylabel="σmax(∂attn/∂u), mean over images",
            title="exact local Lipschitz (attention)")  # fmt: skip
    for ax in (ax1, ax2, ax3):
        ax.legend()
    fig.suptitle(f"ViT vs DiffViT ({result['experiment']}, {result['preset']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FIGURES = {"clip_compare": clip_compare, "main": vit_compare}


def make_figures(results_root="results", figures_root="figures", preset=None) -> list[str]:
    """Draw every figure whose results exist; return the paths written."""
    written = []
    out = pathlib.Path(figures_root)
    out.mkdir(parents=True, exist_ok=True)
    for experiment, draw in FIGURES.items():
        base = pathlib.Path(results_root) / experiment
        if not base.is_dir():
            continue
        for preset_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if preset is not None and preset_dir.name != preset:
                continue
            result_file = preset_dir / "results.json"
            if not result_file.is_file():
                continue
            path = out / f"{experiment}_{preset_dir.name}.png"
            draw(records.read_json(result_file), path)
            written.append(str(path))
    return written


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m experiments.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--results", default="results", help="results root")
    p.add_argument("--figures", default="figures", help="where the PNG files go")
    p.add_argument("--preset", help="only this preset")
    args = p.parse_args(argv)
    written = make_figures(args.results, args.figures, args.preset)
    for path in written:
        print(path)
    if not written:
        print(f"no results under {args.results}/ to draw")
    return written


if __name__ == "__main__":
    main()
