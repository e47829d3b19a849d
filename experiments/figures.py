"""Every figure, drawn from saved results alone (no model is run), in one paper style.

    diffjax figures --workdir .                  # every results/<experiment>/<preset>/
    diffjax figures --experiment depth --preset cpu

Each experiment with saved results gets figures/<experiment>_<preset>.png (300 dpi) and .pdf
(vector). Style: a two-column paper's full text width (7 in), 8-pt fonts, ViT as blue circles
on solid lines and DiffViT as red squares on dashed lines (series at the same x are nudged
apart so none hides another), integer ticks on layer and depth axes, legends beside or below
the data, never over it. Every panel states its n (for an attack success rate: the initially
correct images it is computed over) and what its error bars are. The PDFs carry no creation
date, so redrawing unchanged results rewrites identical files.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402

from diffjax import records  # noqa: E402

WIDTH = 7.0  # inches: the text width of a two-column paper
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "legend.frameon": False,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text
}
SERIES = {
    "vit": dict(color="#1f5fa8", marker="o", ls="-", label="ViT"),
    "clip": dict(color="#1f5fa8", marker="o", ls="-", label="CLIP"),
    "diffvit": dict(color="#c0392b", marker="s", ls="--", label="DiffViT"),
    "diffclip": dict(color="#c0392b", marker="s", ls="--", label="DiffCLIP"),
    "transformer": dict(color="#1f5fa8", marker="o", ls="-", label="Transformer LM"),
    "diff_transformer": dict(color="#c0392b", marker="s", ls="--", label="DIFF LM"),
    "diffvit_reg": dict(color="#2e8b57", marker="^", ls="-.", label="DiffViT + Lipschitz reg."),
}
DODGE = {"vit": -1, "clip": -1, "diffvit": 1, "diffclip": 1, "transformer": -1,
         "diff_transformer": 1, "diffvit_reg": 0}


def _style(name: str, **changes) -> dict:
    return {**SERIES.get(name, dict(label=name)), **changes}


def _dodge(x, name: str, step: float, log: bool = False) -> np.ndarray:
    """``x`` nudged by ``step`` (a fraction of a decade on a log axis) so series at the same x
    stay visible side by side."""
    x = np.asarray(x, float)
    d = DODGE.get(name, 0) * step
    return x * 10 ** d if log else x + d


def _n(images: int, seeds: int) -> str:
    return f"n = {images} images × {seeds} seed{'s' if seeds != 1 else ''}"


def _n_correct(attacked: int, correct: dict[str, int], what: str = "images") -> str:
    """The n of an ASR panel: the initially correct inputs of each model, of those attacked."""
    counts = " / ".join(str(c) for c in correct.values())
    names = " / ".join(SERIES[m]["label"] for m in correct)
    return f"ASR over {counts} correct\nof {attacked} {what}\n({names})"


# What the error bars of a panel are, stated in the panel.
WILSON = "bars: 95 % Wilson interval"
NO_BARS = "no bars: image means"


def _spread(seeds: int) -> str:
    return "bars: ±1 s.d. over seeds" if seeds > 1 else "no bars (one seed)"


def _note(ax, *lines: str) -> None:
    """The panel's n and error bars, as extra title lines (never over the data)."""
    ax.set_title("\n".join([ax.get_title(), *lines]))


def _legend_below(fig, axes, ncol: int | None = None) -> None:
    """One legend for ``axes`` (labels gathered, each once) below the panels."""
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center",
               ncol=ncol or len(handles), bbox_to_anchor=(0.5, 0.0))  # fmt: skip


def _integer_axis(ax, values=None, log: bool = False) -> None:
    """Integer ticks: at ``values`` when given (e.g. the depths), else wherever they fit."""
    if values is not None:
        if log:
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(list(values)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(v) for v in values])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def _save(fig, path: pathlib.Path) -> list[str]:
    """Write ``path`` as PNG (300 dpi) and PDF; free ``fig``; the two paths.

    No creation date in the PDF: the same results give the same bytes.
    """
    # Room for a legend below the panels (_legend_below), sized in inches.
    bottom = 0.32 / fig.get_figheight() if fig.legends else 0.0
    fig.tight_layout(rect=(0, bottom, 1, 1))
    paths = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return [str(p) for p in paths]


def _asr_errorbar(ax, x, asr, lo, hi, name, step=0.06, log=False):
    """ASR with its interval [lo, hi]; undefined rates draw as gaps without error bars."""
    asr, lo, hi = _nan(asr), _nan(lo), _nan(hi)
    yerr = np.clip(np.nan_to_num(np.stack([asr - lo, hi - asr])), 0, None)
    ax.errorbar(_dodge(x, name, step, log), asr, yerr=yerr, **_style(name))


def _mean_std(rows, key=None):
    """Arrays of ``{key}_mean`` and ``{key}_std`` (``mean``/``std`` without a key); None → NaN,
    a missing std → 0."""
    mk, sk = ("mean", "std") if key is None else (f"{key}_mean", f"{key}_std")
    m = _nan([r[mk] for r in rows])
    s = _nan([r.get(sk) for r in rows])
    return m, np.nan_to_num(s)


def clip_compare(result: dict, path: pathlib.Path) -> list[str]:
    """ASR vs ε (95 % Wilson intervals), zero-shot accuracy and per-layer negative alignment."""
    c = result["config"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(WIDTH, 2.4))
    accs, correct = {}, {}
    for run, res in result["models"].items():
        name = run.split("_seed")[0]
        s = [a["summary"] for a in res["attacks"]]
        correct[name] = correct.get(name, 0) + s[0]["clean_correct"]
        ci = [x["asr_ci"] or (None, None) for x in s]
        _asr_errorbar(ax1, [a["eps"] * 255 for a in res["attacks"]], [x["asr"] for x in s],
                      [q[0] for q in ci], [q[1] for q in ci], name)  # fmt: skip
        accs.setdefault(name, []).append(res["zeroshot_accuracy"])
        layers = res.get("layers") or []
        ax3.plot(_dodge([r["layer"] for r in layers], name, 0.05),
                 [r["negative_alignment"] for r in layers], **_style(name))  # fmt: skip
    seeds = len(c["seeds"])
    ax1.set(xlabel="PGD ℓ∞ budget ε (×1/255)", ylabel="attack success rate", ylim=(0, 1.02),
            title="cosine-similarity PGD")  # fmt: skip
    _note(ax1, _n_correct(c["attack_examples"] * seeds, correct), WILSON)
    names = list(accs)
    ax2.bar([SERIES[n]["label"] for n in names], [np.mean(accs[n]) for n in names],
            color=[SERIES[n]["color"] for n in names], hatch=None)  # fmt: skip
    ax2.set(ylabel="zero-shot accuracy", ylim=(0, 1), title=f"zero-shot, {result['dataset']}")
    _note(ax2, _n(c["eval_examples"], seeds), "mean over seeds, no bars")
    ax3.set(xlabel="image-tower layer", ylabel="fraction with cos θ < 0", ylim=(0, 1.02),
            title="negative gradient alignment")  # fmt: skip
    _integer_axis(ax3)
    _note(ax3, _n(c["analysis_examples"], seeds), NO_BARS)
    _legend_below(fig, [ax1])
    return _save(fig, path)


def vit_compare(result: dict, path: pathlib.Path) -> list[str]:
    """ViT vs DiffViT: PGD ASR vs ε (95 % Wilson), negative alignment and σmax per layer."""
    c = result.get("config") or result.get("settings")
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(WIDTH, 2.4))
    correct = {}
    for name, res in result["models"].items():
        s = [a["summary"] for a in res["pgd"]]
        correct[name] = s[0]["clean_correct"]
        ci = [x["asr_ci"] or (None, None) for x in s]
        _asr_errorbar(ax1, [a["eps"] * 255 for a in res["pgd"]], [x["asr"] for x in s],
                      [q[0] for q in ci], [q[1] for q in ci], name)  # fmt: skip
        x = _dodge([r["layer"] for r in res["layers"]], name, 0.05)
        ax2.plot(x, [r["negative_alignment"] for r in res["layers"]], **_style(name))
        ax3.plot(x, [r["sigma_max_mean"] for r in res["layers"]], **_style(name))
    ax1.set(xlabel="PGD ℓ∞ budget ε (×1/255)", ylabel="attack success rate", ylim=(0, 1.02),
            title="PGD attack success")  # fmt: skip
    _note(ax1, _n_correct(c["attack_examples"], correct), WILSON)
    ax2.set(xlabel="layer", ylabel="fraction with cos θ < 0", ylim=(0, 1.02),
            title="negative gradient alignment")  # fmt: skip
    ax3.set(xlabel="layer", ylabel="σmax(∂attn/∂u), mean", title="exact local Lipschitz")
    for ax in (ax2, ax3):
        _integer_axis(ax)
        _note(ax, _n(c["analysis_examples"], 1), NO_BARS)
    _legend_below(fig, [ax1])
    return _save(fig, path)


def asr_table(result: dict, path: pathlib.Path) -> list[str]:
    """Per dataset: PGD ASR vs ε, CW ASR vs ℓ2 budget and AutoAttack ASR (mean ± std, seeds)."""
    c = result["config"]
    seeds = len(c["seeds"])
    datasets = list(result["tables"])
    fig, axes = plt.subplots(len(datasets), 3, figsize=(WIDTH, 2.4 * len(datasets)),
                             squeeze=False)  # fmt: skip
    panels = (("PGD", "PGD ℓ∞ budget ε (×1/255)", f"PGD-{c['pgd_steps']}", "attack_examples",
               False),
              ("CW-L2", "ℓ2 budget (pixels in [0, 1])", "CW-L2 (minimal ‖δ‖₂ ≤ budget)",
               "cw_examples", True),
              ("AutoAttack", "AutoAttack ℓ∞ budget ε (×1/255)", "AutoAttack", "autoattack_examples",
               False))  # fmt: skip
    for row_axes, dataset in zip(axes, datasets, strict=True):
        for name, t in result["tables"][dataset].items():
            for ax, (attack, *_rest, log) in zip(row_axes, panels, strict=True):
                rows = [r for r in t["rows"] if r["attack"].startswith(attack)
                        and r["budget"] is not None]  # fmt: skip
                m, sd = _mean_std(rows)
                x = [r["budget"] for r in rows]
                # AutoAttack runs at a few separate budgets: points, no line between them.
                extra = {"ls": "none"} if attack == "AutoAttack" else {}
                ax.errorbar(_dodge(x, name, 0.03 if log else 0.08, log), m, yerr=sd,
                            **_style(name, **extra))  # fmt: skip
        for ax, (_, xlabel, title, n_key, log) in zip(row_axes, panels, strict=True):
            ax.set(xlabel=xlabel, ylabel="attack success rate", ylim=(0, 1.02),
                   title=f"{title}, {dataset}")  # fmt: skip
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(list(c["l2_budgets"])))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels([f"{b:g}" for b in c["l2_budgets"]])
            _note(ax, _n(c[n_key], seeds), "ASR over the correct", _spread(seeds))
    _legend_below(fig, [axes[0][0]])
    return _save(fig, path)


def lambda_sweep(result: dict, path: pathlib.Path) -> list[str]:
    """Clean accuracy and ASR vs λ_init, ours (mean ± std) next to the paper's Table T1."""
    c = result["config"]
    rows = [r for r in result["rows"] if r["lambda_init"] is not None]
    vit = next(r for r in result["rows"] if r["lambda_init"] is None)
    lams = [r["lambda_init"] for r in rows]
    eps = c["eps"][0] * 255
    seeds = len(c["seeds"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(WIDTH * 0.7, 2.4))
    paper = [(r["lambda_init"], r["paper_clean_accuracy"], r["paper_asr"]) for r in rows
             if r["paper_asr"] is not None]  # fmt: skip
    for ax, key, paper_col in ((ax1, "clean_accuracy", 1), (ax2, f"asr_{eps:g}", 2)):
        m, sd = _mean_std(rows, key)
        ax.errorbar(lams, m, yerr=sd, **_style("diffvit", label="DiffViT (ours)"))
        ax.axhline(vit[f"{key}_mean"], color=SERIES["vit"]["color"], ls="-", lw=1,
                   label="ViT (ours)")  # fmt: skip
        if paper:
            ax.plot([p[0] for p in paper], [p[paper_col] for p in paper], color="0.4",
                    marker="^", ls=":", label="paper T1")  # fmt: skip
    ax1.set(xlabel="λ_init", ylabel="clean accuracy", ylim=(0, 1), title="clean accuracy")
    _note(ax1, f"n = test set × {seeds} seeds", _spread(seeds))
    ax2.set(xlabel="λ_init", ylabel="attack success rate", ylim=(0, 1.02),
            title=f"PGD ASR, ε = {eps:g}/255")  # fmt: skip
    _note(ax2, _n(c["attack_examples"], seeds), "ASR over the correct", _spread(seeds))
    _legend_below(fig, [ax2])
    return _save(fig, path)


def alignment(result: dict, path: pathlib.Path) -> list[str]:
    """Negative-alignment frequency per layer (mean ± std) and cos θ histograms per layer."""
    c = result["config"]
    n = _n(c["examples"], len(c["seeds"]))
    models = result["models"]
    depth = len(next(iter(models.values()))["layers"])
    cols = min(depth + 1, 3)
    rows_ = -(-(depth + 1) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(WIDTH, 2.1 * rows_), squeeze=False)
    axes = axes.ravel()
    edges = np.asarray(result["bins"])
    centers = (edges[1:] + edges[:-1]) / 2
    for name, m in models.items():
        layers = m["layers"]
        mean, sd = _mean_std(layers, "negative_alignment")
        axes[0].errorbar(_dodge([r["layer"] for r in layers], name, 0.06), mean, yerr=sd,
                         **_style(name))  # fmt: skip
        for ax, r in zip(axes[1:], layers, strict=False):
            h = np.asarray(r["histogram"], float)
            ax.step(centers, h / max(h.sum(), 1), where="mid", color=SERIES[name]["color"],
                    ls=SERIES[name]["ls"], label=SERIES[name]["label"])  # fmt: skip
    for ax, r in zip(axes[1:], next(iter(models.values()))["layers"], strict=False):
        ax.set(xlabel="cos θ", ylabel="fraction of (image, head)", title=f"layer {r['layer']}")
        ax.axvline(0, color="k", lw=0.5)
        _note(ax, n, "pooled over seeds, no bars")
    axes[0].set(xlabel="layer", ylabel="fraction with cos θ < 0", ylim=(0, 1.02),
                title="negative alignment (CLS row)")  # fmt: skip
    _integer_axis(axes[0])
    _note(axes[0], n, _spread(len(c["seeds"])))
    spare = axes[depth + 1 :]
    for ax in spare:
        ax.axis("off")
    if len(spare):  # the grid's spare cell holds the legend
        spare[0].legend(*axes[0].get_legend_handles_labels(), loc="center")
    else:
        _legend_below(fig, [axes[0]])
    return _save(fig, path)


def lipschitz(result: dict, path: pathlib.Path) -> list[str]:
    """Exact, sampled and PGD local Lipschitz constants per layer (mean ± std over seeds)."""
    c = result["config"]
    n = _n(c["examples"], len(c["seeds"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(WIDTH, 2.6))
    # Exact, PGD and sampled differ by < 1 % on these models: distinct markers, fills and
    # offsets keep all three visible.
    kinds = {"exact": dict(marker="o", mfc=None, off=-0.12),
             "pgd": dict(marker="x", mfc=None, off=0.0),
             "sampled": dict(marker="v", mfc="none", off=0.12)}  # fmt: skip
    for name, m in result["models"].items():
        layers = m["layers"]
        x = np.asarray([r["layer"] for r in layers], float) + 0.12 * DODGE.get(name, 0)
        for kind, k in kinds.items():
            mean, sd = _mean_std(layers, kind)
            style = _style(name, marker=k["marker"], label=f"{SERIES[name]['label']} {kind}")
            if k["mfc"]:
                style["mfc"] = k["mfc"]
            ax1.errorbar(x + k["off"] * 0.4, mean, yerr=sd, **style)
    lam, ratio = [], []
    for d_seed, v_seed in zip(result["models"]["diffvit"]["per_seed"],
                              result["models"]["vit"]["per_seed"], strict=True):  # fmt: skip
        for d, v in zip(d_seed, v_seed, strict=True):
            if d["lambda"] is not None:
                lam.append(d["lambda"])
                ratio.append(np.mean(d["exact"]) / np.mean(v["exact"]))
    ax2.scatter(lam, ratio, color="#6c3483", marker="D", s=12)
    ax2.axhline(1, color="k", lw=0.5)
    corr = result.get("lambda_correlation") or {}
    rho = f" (Spearman {corr['ratio']['spearman']:.2f})" if corr.get("ratio") else ""
    ax2.set(xlabel="λ of the DA layer", ylabel="DiffViT / ViT exact σmax", yscale="log",
            title=f"ratio vs λ per (seed, layer){rho}")  # fmt: skip
    _note(ax2, n, "one point per (seed, layer)")
    ax1.set(xlabel="layer", ylabel="local Lipschitz constant at u", yscale="log",
            title="exact (Lanczos σmax) and empirical lower bounds")  # fmt: skip
    _integer_axis(ax1)
    _note(ax1, n, _spread(len(c["seeds"])))
    _legend_below(fig, [ax1], ncol=6)
    return _save(fig, path)


def depth(result: dict, path: pathlib.Path) -> list[str]:
    """ASR vs depth at each ε, CW ℓ2 for 100 % ASR vs depth, and ᾱ, bound and amplification.

    Every panel has the same log2 depth axis with a tick at each trained depth.
    """
    c = result["config"]
    seeds = len(c["seeds"])
    rows = result["rows"]
    eps = [e * 255 for e in c["eps"]]
    fig, axes = plt.subplots(1, len(eps) + 2, figsize=(WIDTH, 2.4))
    depths = sorted({r["depth"] for r in rows})
    missing = []
    for name in ("vit", "diffvit"):
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["depth"])
        d = [r["depth"] for r in rs]
        for ax, e in zip(axes, eps, strict=False):
            lo = [r[f"asr_{e:g}_seed0_ci_low"] for r in rs]
            hi = [r[f"asr_{e:g}_seed0_ci_high"] for r in rs]
            _asr_errorbar(ax, d, [r[f"asr_{e:g}_mean"] for r in rs], lo, hi, name,
                          step=0.02, log=True)  # fmt: skip
            ax.set(xlabel="depth D", ylabel="attack success rate", ylim=(0, 1.02),
                   title=f"PGD ε = {e:g}/255")  # fmt: skip
        cw = _nan([r["cw_l2_for_full_asr_mean"] for r in rs])
        axes[len(eps)].plot(_dodge(d, name, 0.02, True), cw, **_style(name))
        # CW left an image unfooled there: no point, and the panel says so.
        missing += [f"{SERIES[name]['label']} D = {x}" for x, v in zip(d, cw, strict=True)
                    if np.isnan(v)]  # fmt: skip
        bound = axes[len(eps) + 1]
        bound.plot(d, [r["paper_bound"] for r in rs], **_style(name, ls=":", mfc="none",
                   label=f"{SERIES[name]['label']} bound (ᾱL̄)^D"))  # fmt: skip
        bound.plot(d, [r["amplification_finite"] for r in rs],
                   **_style(name, label=f"{SERIES[name]['label']} measured"))  # fmt: skip
    axes[len(eps)].set(xlabel="depth D", ylabel="ℓ2 (pixels in [0, 1])",
                       title="CW ℓ2 for 100 % ASR")  # fmt: skip
    axes[len(eps) + 1].set(xlabel="depth D", ylabel="‖Δ^(D)‖ / ‖ξ‖", yscale="log",
                           title="bound vs measured")  # fmt: skip
    notes = [(_n(c["attack_examples"], seeds), "ASR over the correct",
               "bars: 95 % Wilson, seed 0")] * len(eps) + [
        (_n(c["cw_examples"], seeds), _spread(seeds),
         *([f"not reached: {', '.join(missing)}"] if missing else [])),
        (_n(c["profile_examples"], seeds), NO_BARS)]  # fmt: skip
    for ax, note in zip(axes, notes, strict=True):
        _integer_axis(ax, depths, log=True)
        _note(ax, *note)
    _legend_below(fig, [axes[0], axes[len(eps) + 1]])
    return _save(fig, path)


def lambda_training(result: dict, path: pathlib.Path) -> list[str]:
    """λ per DA layer over training; σmax per layer and ASR at the saved checkpoints."""
    c = result["config"]
    seeds = len(c["seeds"])
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(WIDTH, 2.4))
    cmap = plt.get_cmap("viridis")
    styles = ("-", "--", ":", "-.")
    for i, run in enumerate(result["models"]["diffvit"]):
        lam = np.asarray(run["lambda_curve"]["lambda"], float)
        for layer in range(lam.shape[1] if lam.ndim == 2 else 0):
            ax1.plot(run["lambda_curve"]["step"], lam[:, layer], lw=0.9,
                     color=cmap(layer / max(lam.shape[1] - 1, 1)), ls=styles[layer % 4],
                     label=f"layer {layer}" if i == 0 else None)  # fmt: skip
    for name, runs in result["models"].items():
        steps = np.asarray([p["step"] for p in runs[0]["checkpoints"]], float)
        sig = np.asarray([[p["sigma_max_mean"] for p in r["checkpoints"]] for r in runs], float)
        asr = np.asarray([_nan([p["asr"] for p in r["checkpoints"]]) for r in runs], float)
        shift = 0.01 * (steps.max() if steps.size else 1) * DODGE.get(name, 0)
        ax2.errorbar(steps + shift, sig.mean(2).mean(0), yerr=sig.mean(2).std(0), **_style(name))
        ax3.errorbar(steps + shift, np.nanmean(asr, 0), yerr=np.nanstd(asr, 0), **_style(name))
    ax1.set(xlabel="training step", ylabel="λ", title="λ per DA layer")
    _note(ax1, f"every seed ({seeds}), no bars")
    ax2.set(xlabel="training step", ylabel="mean σmax(∂attn/∂u)",
            title="exact local Lipschitz at checkpoints")  # fmt: skip
    _note(ax2, _n(c["analysis_examples"], seeds), _spread(seeds))
    ax3.set(xlabel="training step", ylabel="attack success rate", ylim=(0, 1.02),
            title=f"PGD ASR, ε = {result['eps'] * 255:g}/255")  # fmt: skip
    _note(ax3, _n(c["attack_examples"], seeds), "ASR over the correct", _spread(seeds))
    _legend_below(fig, [ax1, ax2], ncol=6)
    return _save(fig, path)


def language(result: dict, path: pathlib.Path) -> list[str]:
    """DA LM vs standard LM: ASR under embedding PGD (ℓ2 per token, ℓ∞) and token substitution
    (HotFlip, by budget) with Wilson intervals; negative alignment and σmax per layer."""
    fig, axes = plt.subplots(2, 3, figsize=(WIDTH, 4.8))
    axes = axes.ravel()
    n = result["examples"]
    correct = {name: m["attacks"][0]["clean_correct"] for name, m in result["models"].items()}
    panels = (("pgd_l2_token", "ℓ2 per token (× row RMS)", True),
              ("pgd_linf", "ℓ∞ (× coordinate RMS)", True),
              ("hotflip", "bytes substituted (HotFlip)", False))  # fmt: skip
    for ax, (attack, xlabel, log) in zip(axes, panels, strict=False):
        for name, m in result["models"].items():
            rs = [a for a in m["attacks"] if a["attack"] == attack]
            x = np.array([a["budget"] for a in rs])
            asr = _nan([a["asr"] for a in rs])
            lo = _nan([a["asr_ci"][0] if a["asr_ci"] else None for a in rs])
            hi = _nan([a["asr_ci"][1] if a["asr_ci"] else None for a in rs])
            _asr_errorbar(ax, x, asr, lo, hi, name, log=log)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(list(x)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{v:g}" for v in x])
        else:
            _integer_axis(ax, [int(v) for v in x])
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.03, 1.03)
        _note(ax, _n_correct(n, correct, "prompts"), WILSON)
    axes[0].set_ylabel("attack success rate")
    for ax, key, ylabel in ((axes[3], "negative_alignment", "negative alignment"),
                            (axes[4], "sigma_max_mean", "σmax(∂attn/∂u), mean")):  # fmt: skip
        for name, m in result["models"].items():
            layers = np.array([r["layer"] for r in m["layers"]])
            ax.plot(_dodge(layers, name, 0.05), _nan([r[key] for r in m["layers"]]),
                    **_style(name))  # fmt: skip
        _integer_axis(ax, [int(v) for v in layers])
        ax.set(xlabel="layer", ylabel=ylabel)
        _note(ax, f"n = {result['config']['analysis_examples']} prompts",
              "no bars: prompt means")  # fmt: skip
    axes[3].set_ylim(-0.03, 1.03)
    axes[5].axis("off")  # the grid's spare cell holds the legend
    axes[5].legend(*axes[0].get_legend_handles_labels(), loc="center")
    return _save(fig, path)


# The robust training of each certified-experiment model, as a line style.
TRAINING_STYLE = {
    "none": dict(ls=":", label="natural"),
    "pgd": dict(ls="--", label="PGD"),
    "ibp": dict(ls="-", label="IBP"),
    "crown-ibp": dict(ls="-", label="CROWN-IBP"),
}


def certified(result: dict, path: pathlib.Path) -> list[str]:
    """Certified accuracy (the ``verify_methods`` run at each depth) vs ε, ℓ∞ (top) and ℓ2
    (bottom), one column per depth: ViT and DiffViT (colour, marker), natural / PGD /
    certified training (line style); ε = 0 is the clean accuracy. Seed-pooled rates with
    Wilson 95 % bars."""
    c = result["config"]
    depths = list(c["depths"])
    fig, axes = plt.subplots(2, len(depths), figsize=(WIDTH, 4.2), squeeze=False)
    for row, norm in enumerate(("linf", "l2")):
        eps = np.asarray(c[f"eps_{norm}"], float)
        x = np.concatenate([[0.0], eps * 255 if norm == "linf" else eps])
        for col, depth in enumerate(depths):
            ax = axes[row, col]
            for m in result["models"]:
                if m["depth"] != depth:
                    continue
                r = m["rates"]
                names = ["clean"] + [
                    f"certified_{norm}_{k}"
                    for k in (f"{e * 255:g}" if norm == "linf" else f"{e:g}" for e in eps)
                ]
                y = np.array([r[n]["rate"] for n in names])
                ci = np.array([r[n]["ci95"] for n in names])
                style = _style(
                    m["model"],
                    ls=TRAINING_STYLE[m["training"]]["ls"],
                    label=f"{SERIES[m['model']]['label']}, "
                    f"{TRAINING_STYLE[m['training']]['label']}",
                )
                ax.errorbar(_dodge(x, m["model"], 0.01 * x.max()), y,
                            yerr=[y - ci[:, 0], ci[:, 1] - y], **style)  # fmt: skip
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("ℓ∞ ε (×1/255)" if norm == "linf" else "ℓ2 ε (pixels in [0, 1])")
            ax.set_title(f"depth {depth}")
            n = result["models"][0]["rates"]["clean"]["n"]
            methods = next(m["verify_methods"] for m in result["models"] if m["depth"] == depth)
            _note(ax, f"{' > '.join(methods)}, n = {n} images (pooled seeds)",
                  "bars: Wilson 95 %")
        axes[row, 0].set_ylabel(f"certified accuracy, {'ℓ∞' if norm == 'linf' else 'ℓ2'}")
    _legend_below(fig, list(axes.flat), ncol=6)
    return _save(fig, path)


FIGURES = {
    "clip_compare": clip_compare,
    "main": vit_compare,
    "asr_table": asr_table,
    "lambda_sweep": lambda_sweep,
    "alignment": alignment,
    "lipschitz": lipschitz,
    "depth": depth,
    "lambda_training": lambda_training,
    "language": language,
    "certified": certified,
}


def make_figures(results_root="results", figures_root="figures", *, experiment=None,
                 preset=None) -> list[str]:  # fmt: skip
    """Draw every figure whose results exist (optionally one experiment / preset); the paths
    written (a PNG and a PDF each)."""
    written = []
    out = pathlib.Path(figures_root)
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        base = pathlib.Path(results_root) / name
        if (experiment is not None and name != experiment) or not base.is_dir():
            continue
        for preset_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            result_file = preset_dir / "results.json"
            if (preset is not None and preset_dir.name != preset) or not result_file.is_file():
                continue
            with plt.rc_context(STYLE):
                written += draw(records.read_json(result_file), out / f"{name}_{preset_dir.name}")
    return written
