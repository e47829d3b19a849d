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


def _save(fig, title: str, path: pathlib.Path) -> None:
    """Title, lay out, write ``path`` (PNG, 120 dpi) and free ``fig``."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    _save(fig, f"CLIP vs DiffCLIP ({result['preset']} preset)", path)


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
    _save(fig, f"ViT vs DiffViT ({result['experiment']}, {result['preset']})", path)


def _mean_std(rows, key=None):
    """Arrays of ``{key}_mean`` and ``{key}_std`` (``mean``/``std`` without a key); None → NaN,
    a missing std → 0."""
    mk, sk = ("mean", "std") if key is None else (f"{key}_mean", f"{key}_std")
    m = np.array([np.nan if r[mk] is None else r[mk] for r in rows], float)
    s = np.array([np.nan if r.get(sk) is None else r[sk] for r in rows], float)
    return m, np.nan_to_num(s)


def asr_table(result: dict, path: pathlib.Path) -> None:
    """Per dataset: PGD ASR vs ε, CW ASR vs ℓ2 budget and AutoAttack ASR (mean ± std, seeds)."""
    datasets = list(result["tables"])
    fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False)
    for (ax1, ax2, ax3), dataset in zip(axes, datasets, strict=True):
        for name, t in result["tables"][dataset].items():
            kw = dict(marker="o", capsize=3, color=COLORS.get(name), label=LABELS.get(name, name))
            for ax, attack in ((ax1, "PGD"), (ax2, "CW-L2"), (ax3, "AutoAttack")):
                rows = [r for r in t["rows"] if r["attack"].startswith(attack)
                        and r["budget"] is not None]  # fmt: skip
                m, sd = _mean_std(rows)
                ax.errorbar([r["budget"] for r in rows], m, yerr=sd, **kw)
        ax1.set(xlabel="PGD ℓ∞ budget ε (×1/255)", ylabel="attack success rate", ylim=(0, 1.02),
                title=f"PGD, {dataset}")  # fmt: skip
        ax2.set(xlabel="ℓ2 budget (pixels in [0, 1])", ylabel="attack success rate",
                ylim=(0, 1.02), title="CW-L2 (minimal ‖δ‖₂ ≤ budget)")  # fmt: skip
        ax3.set(xlabel="AutoAttack ℓ∞ budget ε (×1/255)", ylabel="attack success rate",
                ylim=(0, 1.02), title="AutoAttack")  # fmt: skip
        for ax in (ax1, ax2, ax3):
            ax.legend()
    _save(fig, f"ViT vs DiffViT ASR ({result['preset']} preset; mean ± std over seeds)", path)


def lambda_sweep(result: dict, path: pathlib.Path) -> None:
    """Clean accuracy and ASR vs λ_init, ours (mean ± std) next to the paper's Table T1."""
    rows = [r for r in result["rows"] if r["lambda_init"] is not None]
    vit = next(r for r in result["rows"] if r["lambda_init"] is None)
    lams = [r["lambda_init"] for r in rows]
    eps = result["config"]["eps"][0] * 255
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    m, sd = _mean_std(rows, "clean_accuracy")
    ax1.errorbar(lams, m, yerr=sd, marker="o", capsize=3, color="tab:red", label="DiffViT (ours)")
    ax1.axhline(vit["clean_accuracy_mean"], color="tab:blue", ls="--", label="ViT (ours)")
    m, sd = _mean_std(rows, f"asr_{eps:g}")
    ax2.errorbar(lams, m, yerr=sd, marker="o", capsize=3, color="tab:red", label="DiffViT (ours)")
    ax2.axhline(vit[f"asr_{eps:g}_mean"], color="tab:blue", ls="--", label="ViT (ours)")
    paper = [(r["lambda_init"], r["paper_clean_accuracy"], r["paper_asr"]) for r in rows
             if r["paper_asr"] is not None]  # fmt: skip
    if paper:
        ax1.plot([p[0] for p in paper], [p[1] for p in paper], "s:", color="gray",
                 label="paper T1")  # fmt: skip
        ax2.plot([p[0] for p in paper], [p[2] for p in paper], "s:", color="gray",
                 label="paper T1")  # fmt: skip
    ax1.set(xlabel="λ_init", ylabel="clean accuracy", ylim=(0, 1), title="clean accuracy")
    ax2.set(xlabel="λ_init", ylabel="attack success rate", ylim=(0, 1.02),
            title=f"PGD ASR, ε = {eps:g}/255")  # fmt: skip
    for ax in (ax1, ax2):
        ax.legend()
    _save(
        fig,
        f"λ_init sweep, {result['dataset']} D={result['config']['depth']} ({result['preset']})",
        path,
    )


def alignment(result: dict, path: pathlib.Path) -> None:
    """Negative-alignment frequency per layer (mean ± std) and cos θ histograms per layer."""
    models = result["models"]
    depth = len(next(iter(models.values()))["layers"])
    fig, axes = plt.subplots(1, depth + 1, figsize=(3.3 * (depth + 1), 3.4))
    edges = np.asarray(result["bins"])
    centers = (edges[1:] + edges[:-1]) / 2
    for name, m in models.items():
        layers = m["layers"]
        mean, sd = _mean_std(layers, "negative_alignment")
        axes[0].errorbar([r["layer"] for r in layers], mean, yerr=sd, marker="o", capsize=3,
                         color=COLORS.get(name), label=LABELS.get(name, name))  # fmt: skip
        for ax, r in zip(axes[1:], layers, strict=True):
            h = np.asarray(r["histogram"], float)
            ax.step(centers, h / max(h.sum(), 1), where="mid", color=COLORS.get(name),
                    label=LABELS.get(name, name))  # fmt: skip
            ax.set(xlabel="cos θ", ylabel="fraction of (image, head)",
                   title=f"layer {r['layer']}")  # fmt: skip
            ax.axvline(0, color="k", lw=0.5)
    axes[0].set(xlabel="layer (0-based)", ylabel="fraction with cos θ < 0", ylim=(0, 1.02),
                title="negative alignment")  # fmt: skip
    for ax in axes:
        ax.legend(fontsize=8)
    _save(
        fig,
        f"Branch gradient alignment (CLS row, w.r.t. the image), {result['dataset']} "
        f"({result['preset']})",
        path,
    )


def lipschitz(result: dict, path: pathlib.Path) -> None:
    """Exact, sampled and PGD local Lipschitz constants per layer (mean ± std over seeds)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    styles = {"exact": "o-", "sampled": "v:", "pgd": "^--"}
    for name, m in result["models"].items():
        layers = m["layers"]
        x = [r["layer"] for r in layers]
        for kind, style in styles.items():
            mean, sd = _mean_std(layers, kind)
            ax1.errorbar(x, mean, yerr=sd, fmt=style, capsize=3, color=COLORS.get(name),
                         label=f"{LABELS.get(name, name)} {kind}")  # fmt: skip
    lam, ratio = [], []
    for d_seed, v_seed in zip(result["models"]["diffvit"]["per_seed"],
                              result["models"]["vit"]["per_seed"], strict=True):  # fmt: skip
        for d, v in zip(d_seed, v_seed, strict=True):
            if d["lambda"] is not None:
                lam.append(d["lambda"])
                ratio.append(np.mean(d["exact"]) / np.mean(v["exact"]))
    ax2.scatter(lam, ratio, color="tab:purple")
    ax2.axhline(1, color="k", lw=0.5)
    c = result.get("lambda_correlation") or {}
    rho = f", Spearman {c['ratio']['spearman']:.2f}" if c.get("ratio") else ""
    ax2.set(xlabel="λ of the DA layer", ylabel="DiffViT / ViT exact σmax (same seed, layer)",
            yscale="log", title=f"ratio vs λ per (seed, layer){rho}")  # fmt: skip
    ax1.set(xlabel="layer (0-based)", ylabel="local Lipschitz constant of attn at u",
            yscale="log", title="exact (Lanczos σmax) vs empirical lower bounds")  # fmt: skip
    ax1.legend(fontsize=7)
    _save(fig, f"Local Lipschitz constants, {result['dataset']} ({result['preset']})", path)


def depth(result: dict, path: pathlib.Path) -> None:
    """ASR vs depth at each ε, CW ℓ2 for 100 % ASR vs depth, and ᾱ, bound and amplification."""
    rows = result["rows"]
    eps = [e * 255 for e in result["config"]["eps"]]
    fig, axes = plt.subplots(1, len(eps) + 2, figsize=(3.6 * (len(eps) + 2), 3.6))
    for name in ("vit", "diffvit"):
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["depth"])
        d = [r["depth"] for r in rs]
        kw = dict(marker="o", color=COLORS.get(name), label=LABELS.get(name, name))
        for ax, e in zip(axes, eps, strict=False):
            lo = np.array([np.nan if r[f"asr_{e:g}_seed0_ci_low"] is None
                           else r[f"asr_{e:g}_seed0_ci_low"] for r in rs], float)  # fmt: skip
            hi = np.array([np.nan if r[f"asr_{e:g}_seed0_ci_high"] is None
                           else r[f"asr_{e:g}_seed0_ci_high"] for r in rs], float)  # fmt: skip
            _asr_errorbar(ax, d, [r[f"asr_{e:g}_mean"] for r in rs], lo, hi, name)
            ax.set(xlabel="depth D", ylabel="attack success rate", ylim=(0, 1.02),
                   title=f"PGD ε = {e:g}/255", xscale="log", xticks=d, xticklabels=d)  # fmt: skip
        cw = [np.nan if r["cw_l2_for_full_asr_mean"] is None else r["cw_l2_for_full_asr_mean"]
              for r in rs]  # fmt: skip
        axes[len(eps)].plot(d, cw, **kw)
        axes[len(eps) + 1].plot(d, [r["paper_bound"] for r in rs], ls="--", **kw)
        axes[len(eps) + 1].plot(d, [r["amplification_finite"] for r in rs], ls="-",
                                marker="s", color=COLORS.get(name))  # fmt: skip
    axes[len(eps)].set(xlabel="depth D", ylabel="ℓ2 (pixels in [0, 1])",
                       title="CW ℓ2 needed for 100 % ASR", xscale="log")  # fmt: skip
    axes[len(eps) + 1].set(xlabel="depth D", ylabel="‖Δ^(D)‖ / ‖ξ‖", yscale="log",
                           xscale="log", title="bound (ᾱL̄)^D (dashed) vs measured")  # fmt: skip
    for ax in axes:
        ax.legend(fontsize=8)
    _save(fig, f"Depth crossover, {result['dataset']} ({result['preset']})", path)


def lambda_training(result: dict, path: pathlib.Path) -> None:
    """λ per DA layer over training; σmax per layer and ASR at the saved checkpoints."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.6))
    cmap = plt.get_cmap("viridis")
    for i, run in enumerate(result["models"]["diffvit"]):
        lam = np.asarray(run["lambda_curve"]["lambda"], float)
        for layer in range(lam.shape[1] if lam.ndim == 2 else 0):
            ax1.plot(run["lambda_curve"]["step"], lam[:, layer],
                     color=cmap(layer / max(lam.shape[1] - 1, 1)),
                     label=f"layer {layer}" if i == 0 else None)  # fmt: skip
    for name, runs in result["models"].items():
        steps = [p["step"] for p in runs[0]["checkpoints"]]
        sig = np.asarray([[p["sigma_max_mean"] for p in r["checkpoints"]] for r in runs], float)
        asr = np.asarray([[np.nan if p["asr"] is None else p["asr"] for p in r["checkpoints"]]
                          for r in runs], float)  # fmt: skip
        ax2.errorbar(steps, sig.mean(2).mean(0), yerr=sig.mean(2).std(0), marker="o", capsize=3,
                     color=COLORS.get(name), label=LABELS.get(name, name))  # fmt: skip
        ax3.errorbar(steps, np.nanmean(asr, 0), yerr=np.nanstd(asr, 0), marker="o", capsize=3,
                     color=COLORS.get(name), label=LABELS.get(name, name))  # fmt: skip
    ax1.set(xlabel="training step", ylabel="λ", title="λ per DA layer (all seeds)")
    ax2.set(xlabel="training step", ylabel="mean σmax(∂attn/∂u) (layers, images)",
            title="exact local Lipschitz at checkpoints")  # fmt: skip
    ax3.set(xlabel="training step", ylabel="attack success rate", ylim=(0, 1.02),
            title=f"PGD ASR, ε = {result['eps'] * 255:g}/255")  # fmt: skip
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    _save(
        fig,
        f"λ during training, {result['dataset']} ({result['preset']}; mean ± std over seeds)",
        path,
    )


FIGURES = {
    "clip_compare": clip_compare,
    "main": vit_compare,
    "asr_table": asr_table,
    "lambda_sweep": lambda_sweep,
    "alignment": alignment,
    "lipschitz": lipschitz,
    "depth": depth,
    "lambda_training": lambda_training,
}


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
