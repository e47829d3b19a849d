"""Paper result (a): the ASR table, ViT vs DiffViT, under PGD-ℓ∞, CW-ℓ2 and AutoAttack.

    diffjax run asr_table --config=asr_table:mini      # test size, synthetic data
    diffjax run asr_table --config=asr_table:cpu        # CIFAR-10, 2-core CPU

For every dataset, model (ViT, DiffViT from the shared zoo) and seed: clean accuracy; PGD-ℓ∞
ASR at each ε; CW-L2 minimal perturbations and the ASR at each ℓ2 budget (an example counts at
budget b when CW fooled it with ‖δ‖₂ ≤ b); AutoAttack ASR at its ε. ASR is over the initially
correct examples, with a 95 % Wilson interval per seed and the mean ± std and a 95 %
t-interval over seeds. Every adversarial example is re-evaluated by the model and its norm and
[0, 1] box are re-measured outside the attack code.

Writes results/asr_table/<preset>/results.json and summary.csv; each (dataset, model, seed,
attack) is a part file under parts/, so an interrupted run redoes only what is missing.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

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


def cw_budget_asr(part: dict, budgets) -> list[dict]:
    """CW ASR at each ℓ2 budget from the per-example records of a CW part."""
    correct = np.asarray(part["clean_correct"], bool)
    fooled = correct & ~np.asarray(part["adv_correct"], bool)
    l2 = np.asarray(part["l2"], float)
    n = int(correct.sum())
    out = []
    for b in budgets:
        k = int(np.sum(fooled & (l2 <= b)))
        out.append({"l2": b, "asr": k / n if n else None,
                    "asr_ci": attacks.wilson_interval(k, n)})  # fmt: skip
    return out


def model_parts(zoo: Zoo, preset, dataset: str, train, test, attention: str, seed: int,
                parts: pathlib.Path) -> dict:  # fmt: skip
    """Every attack on one zoo model; each attack is a cached part file."""
    tag = f"{dataset.replace(':', '_')}_{NAMES[attention]}_s{seed}"
    state = {}
    quiet = zoo.ctx.quiet

    def model():
        if "model" not in state:
            state["model"], state["train"], _ = zoo.model(train, test, attention, seed=seed,
                                                          dataset=dataset)  # fmt: skip
        return state["model"]

    key = jax.random.key(seed)
    name = f"{NAMES[attention]} seed {seed}"
    out = {"clean": records.cached(parts / f"{tag}_clean.json", lambda: {
        **evaluate(model(), test), "train": state["train"]})}  # fmt: skip
    out["pgd"] = records.cached(parts / f"{tag}_pgd.json", lambda: pgd_asr(
        model(), test.take(preset.attack_examples), preset.eps, steps=preset.pgd_steps, key=key,
        batch_size=preset.batch_size, desc=f"PGD {name}", quiet=quiet))  # fmt: skip
    cw = records.cached(parts / f"{tag}_cw.json", lambda: run_attack(
        attacks.model_function(model()), test.take(preset.cw_examples), attacks.cw_l2,
        attacks.CWConfig(**preset.cw), 
        key=key, batch_size=preset.batch_size, desc=f"CW {name}", quiet=quiet))  # fmt: skip
    out["cw"] = {**cw, "budgets": cw_budget_asr(cw, preset.l2_budgets)}
    out["autoattack"] = [
        {"eps": eps, **records.cached(parts / f"{tag}_aa{eps * 255:g}.json", lambda eps=eps: (
            run_attack(attacks.model_function(model()), test.take(preset.autoattack_examples),
                       attacks.autoattack, attacks.AutoAttackConfig(eps, **preset.autoattack),
                       key=key, batch_size=preset.batch_size,
                       desc=f"AutoAttack {name} ε={eps * 255:g}/255", quiet=quiet)))}
        for eps in preset.autoattack_eps
    ]  # fmt: skip
    return out


def aggregate(per_seed: list[dict], preset) -> list[dict]:
    """Rows (attack, budget): mean ± std and 95 % t-interval over seeds of the ASR (of the
    clean accuracy, of the median ‖δ‖₂ in the rows so named)."""

    def row(attack, budget, unit, values):
        values = [v for v in values if v is not None]
        s = nan_to_none(records.mean_std_ci(values)) if values else {
            "mean": None, "std": None, "ci": None, "n": 0}  # fmt: skip
        return {"attack": attack, "budget": budget, "unit": unit, "mean": s["mean"],
                "std": s["std"], "ci95": s["ci"], "seeds": s["n"], "per_seed": values}  # fmt: skip

    rows = [row("clean accuracy", None, None, [p["clean"]["test_accuracy"] for p in per_seed])]
    for i, eps in enumerate(preset.eps):
        rows.append(row(f"PGD-{preset.pgd_steps} ℓ∞", eps * 255, "/255",
                        [p["pgd"][i]["summary"]["asr"] for p in per_seed]))  # fmt: skip
    for i, b in enumerate(preset.l2_budgets):
        rows.append(row("CW-L2", b, "ℓ2", [p["cw"]["budgets"][i]["asr"] for p in per_seed]))
    rows.append(row("CW-L2 median ‖δ‖₂ (fooled)", None, "ℓ2",
                    [p["cw"]["summary"]["median_l2"] for p in per_seed]))  # fmt: skip
    for i, eps in enumerate(preset.autoattack_eps):
        rows.append(row("AutoAttack ℓ∞", eps * 255, "/255",
                        [p["autoattack"][i]["summary"]["asr"] for p in per_seed]))  # fmt: skip
    return rows


def run(config, ctx: Context) -> dict:
    """The ASR table of ``config`` (``experiments/configs/asr_table.py``); its results dict."""
    preset = config
    zoo = Zoo(recipes.train_config(config.train), ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    # Every dataset is loaded before any compute: a missing one fails at once, clearly.
    data = {d: zoo.data(d) for d in preset.datasets}
    tables, csv_rows = {}, []
    for dataset, (train, test) in data.items():
        tables[dataset] = {}
        for attention in MODELS:
            per_seed = [model_parts(zoo, preset, dataset, train, test, attention, seed,
                                    out_dir / "parts") for seed in preset.seeds]  # fmt: skip
            rows = aggregate(per_seed, preset)
            tables[dataset][NAMES[attention]] = {"rows": rows, "per_seed": per_seed}
            csv_rows += [
                {"dataset": dataset, "model": NAMES[attention]}
                | {k: v for k, v in r.items() if k != "per_seed"}
                for r in rows
            ]
    result = write_results(out_dir, config, {"tables": tables}, csv_rows)
    for dataset, t in tables.items():
        print(f"\nASR table, {dataset} ({config.preset}; mean ± std over "
              f"{len(preset.seeds)} seeds)")  # fmt: skip
        print(f"{'':<34}{'ViT':>18}{'DiffViT':>18}")
        for rv, rd in zip(t["vit"]["rows"], t["diffvit"]["rows"], strict=True):
            label = rv["attack"] + ("" if rv["budget"] is None else
                                    f" {rv['budget']:g}{rv['unit']}")  # fmt: skip
            cell = lambda r: f"{fmt(r['mean'])} ± {fmt(r['std'])}"  # noqa: E731
            print(f"{label:<34}{cell(rv):>18}{cell(rd):>18}")
    print(f"results: {out_dir / 'results.json'}")
    return result
