"""Language models: a Differential Transformer LM against its parameter-matched standard LM.

    diffjax run language --config=language:mini
    diffjax run language --config=language:cpu

Trains both byte-level LMs (:mod:`diffjax.lm_train`: the offline Python-docs corpus plus the
key–value retrieval task), then for each model:

* clean quality: validation loss, perplexity and bits per byte, retrieval accuracy;
* attacks on the retrieval answer of held-out prompts, editing only the filler bytes between the
  needles (never a key, value or the query, which would change the right answer): embedding PGD
  (ℓ2 per token, ℓ2 per sequence, ℓ∞) at several radii, HotFlip at several substitution
  budgets, targeted GCG towards a wrong digit; every result re-checked, ASR with 95 % Wilson
  intervals (:func:`diffjax.attacks.text.summarize_text`);
* the exact branch analysis per layer (:func:`diffjax.analysis.layer_summary` with
  ``wrt="embeddings"``, every query row): negative-alignment frequency overall, per query
  position and at the answer row, and σmax of each attention layer by Lanczos.

PGD radii are relative: ℓ2 radii in units of the model's RMS embedding-row norm (per token; the
per-sequence radius is that times √(editable positions)), ℓ∞ radii in units of the RMS
embedding coordinate, so the two models are attacked at the same relative size.

Writes results/language/<preset>/results.json and summary.csv; runs under runs/.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.analysis import layer_summary
from diffjax.attacks import text as ta
from diffjax.data import text
from diffjax.experiments.common import Context, TrainBar, fmt, write_results
from diffjax.experiments.configs import recipes
from diffjax.lm_train import EVAL_TAG, train_lm
from diffjax.vit import count_params

MODELS = {"softmax": "transformer", "diff": "diff_transformer"}


def attack_prompts(config, examples: int, seed: int):
    """Held-out retrieval prompts: (inputs [B, L−1], answers [B], editable [B, L−1] bool)."""
    task = config.retrieval
    _, val = text.split_corpus(text.load_corpus(config.corpus), config.val_fraction)
    key = jax.random.fold_in(jax.random.key(seed), EVAL_TAG + 2)
    tokens, answers, _ = text.retrieval_batch(key, jnp.asarray(val), task, examples)
    inputs = tokens[:, :-1]
    filler = np.zeros(inputs.shape[1], bool)
    for p in range(task.pairs):
        start = p * (task.filler + 4)
        filler[start : start + task.filler] = True
    return inputs, answers, jnp.broadcast_to(jnp.asarray(filler), inputs.shape)


def _summary(result, labels, targets=None) -> dict:
    """The accounting summary plus the mean substitutions over the fooled prompts (initially
    correct and successfully attacked) and the count of unconfirmed claims."""
    s = ta.summarize_text(result, labels, targets).as_dict()
    success = np.asarray(result.success)
    fooled = success & (np.asarray(result.clean_logits).argmax(1) == np.asarray(labels))
    changed = np.asarray(result.changed)[fooled]
    s["mean_changed"] = float(changed.mean()) if changed.size else None
    s["claimed_not_rechecked"] = int(np.sum(np.asarray(result.claimed) & ~success))
    return s


def attack_model(model, preset, inputs, answers, editable, seed: int) -> list[dict]:
    """Every attack of the preset on one model: one row per (attack, budget)."""
    tm = ta.text_model(model)
    pos = jnp.full(inputs.shape[0], inputs.shape[1] - 1)
    key = jax.random.key(seed)
    e = np.asarray(tm.embedding)
    row_rms = float(np.sqrt(np.mean(np.sum(e**2, axis=1))))
    coord_rms = row_rms / np.sqrt(e.shape[1])
    n_edit = int(np.asarray(editable[0]).sum())
    args = (tm, inputs, editable, pos, answers, key)
    rows = []
    for rel in preset.pgd_eps:
        for scope, eps in (("token", rel * row_rms), ("sequence", rel * row_rms * np.sqrt(n_edit))):
            cfg = ta.EmbeddingPGDConfig(
                eps=float(eps), norm="l2", scope=scope, steps=preset.pgd_steps
            )
            rows.append({"attack": f"pgd_l2_{scope}", "budget": float(rel), "eps": float(eps),
                         **_summary(ta.embedding_pgd(*args, cfg), answers)})  # fmt: skip
    for rel in preset.pgd_linf:
        cfg = ta.EmbeddingPGDConfig(eps=float(rel * coord_rms), norm="linf", steps=preset.pgd_steps)
        rows.append({"attack": "pgd_linf", "budget": float(rel), "eps": float(rel * coord_rms),
                     **_summary(ta.embedding_pgd(*args, cfg), answers)})  # fmt: skip
    for budget in preset.hotflip_budgets:
        cfg = ta.HotFlipConfig(budget=int(budget), candidates=preset.hotflip_candidates)
        rows.append({"attack": "hotflip", "budget": float(budget), "eps": None,
                     **_summary(ta.hotflip(*args, cfg), answers)})  # fmt: skip
    digits = jnp.asarray(answers) - ord("0")
    targets = ((digits + 1) % 10 + ord("0")).astype(jnp.int32)
    cfg = ta.GCGConfig(steps=preset.gcg_steps, top_k=preset.gcg_top_k,
                       search_width=preset.gcg_search_width, targeted=True)  # fmt: skip
    rows.append({"attack": "gcg_targeted", "budget": float(preset.gcg_steps), "eps": None,
                 **_summary(ta.gcg(*args, cfg, targets=targets), answers, targets)})  # fmt: skip
    return rows


def analyse_model(model, inputs, preset, seed: int) -> list[dict]:
    """Per layer: alignment over all (example, head, query row), per query position and at the
    answer row; σmax of the attention layer (Lanczos)."""
    tokens = inputs[: preset.analysis_examples]
    rows = layer_summary(model, tokens, key=jax.random.key(seed), row=None, wrt="embeddings",
                         batch_size=preset.analysis_examples,
                         max_iters=preset.max_iters)  # fmt: skip
    n = tokens.shape[1]
    out = []
    for r in rows:
        cos = np.asarray(r["cos"]).reshape(len(tokens), -1, n)  # [examples, heads, positions]
        finite = np.isfinite(cos)
        per_pos = np.where(finite.any((0, 1)), np.sum((cos < 0) & finite, (0, 1)) /
                           np.maximum(finite.sum((0, 1)), 1), np.nan)  # fmt: skip
        out.append({
            "layer": r["layer"], "kind": r["kind"], "lambda": r["lambda"],
            "negative_alignment": r["negative_alignment"], "cos_median": r["cos_median"],
            "negative_alignment_answer_row": float(np.mean(cos[:, :, -1] < 0)),
            "negative_alignment_per_position": [None if np.isnan(x) else float(x) for x in per_pos],
            "sigma_max_mean": r["sigma_max_mean"], "sigma_max_max": r["sigma_max_max"],
            "sigma_bound_max": r["sigma_bound_max"], "examples": r["examples"],
        })  # fmt: skip
    return out


def run(config, ctx: Context) -> dict:
    t0 = time.perf_counter()
    base = recipes.lm_train_config(config.lm_train).replace(seed=config.seed)
    inputs, answers, editable = attack_prompts(base, config.examples, config.seed)
    models, rows = {}, []
    for attention, name in MODELS.items():
        cfg = base.replace(model=base.model.replace(attention=attention))
        run_dir = ctx.runs / f"language_{config.preset}_{attention}_s{config.seed}"
        model, summary = train_lm(cfg, run_dir, progress=TrainBar(name, disable=ctx.quiet))
        attacks = attack_model(model, config, inputs, answers, editable, config.seed)
        layers = analyse_model(model, inputs, config, config.seed)
        models[name] = {"params": count_params(model), "clean": summary["final"],
                        "train": {k: summary[k] for k in ("steps", "train_tokens_per_s",
                                                          "best_step")},
                        "attacks": attacks, "layers": layers,
                        "corpus": summary["corpus"]}  # fmt: skip
        rows.append({"model": name, "kind": "clean", **summary["final"]})
        rows += [{"model": name, "kind": "attack", "attack": a["attack"], "budget": a["budget"],
                  "asr": a["asr"], "clean_accuracy": a["clean_accuracy"],
                  "robust_accuracy": a["robust_accuracy"]} for a in attacks]  # fmt: skip
        rows += [{"model": name, "kind": "layer", "layer": r["layer"],
                  "negative_alignment": r["negative_alignment"],
                  "sigma_max_mean": r["sigma_max_mean"], "lambda": r["lambda"]}
                 for r in layers]  # fmt: skip
    wall = time.perf_counter() - t0
    body = {"models": models, "examples": int(config.examples),
            "editable_positions": int(np.asarray(editable[0]).sum()),
            "prompt_length": int(inputs.shape[1]), "wall_seconds": wall}  # fmt: skip
    result = write_results(ctx.results(config.experiment, config.preset), config, body, rows)
    _print(models, config, wall)
    return result


def _print(models: dict, config, wall: float) -> None:
    t, d = models["transformer"], models["diff_transformer"]
    print(f"\nLanguage models ({config.preset}; {t['params']:,} vs {d['params']:,} parameters)")
    print(f"{'':<28}{'Transformer':>13}{'DIFF':>10}")
    for key, label in (("val_loss", "val loss (nats/byte)"), ("val_perplexity", "perplexity"),
                       ("retrieval_accuracy", "retrieval accuracy")):  # fmt: skip
        print(f"{label:<28}{fmt(t['clean'][key]):>13}{fmt(d['clean'][key]):>10}")
    for a, b in zip(t["attacks"], d["attacks"], strict=True):
        label = f"ASR {a['attack']} @ {a['budget']:g}"
        print(f"{label:<28}{fmt(a['asr']):>13}{fmt(b['asr']):>10}")
    for a, b in zip(t["layers"], d["layers"], strict=True):
        print(f"{'layer ' + str(a['layer']) + ' neg. alignment':<28}"
              f"{fmt(a['negative_alignment']):>13}{fmt(b['negative_alignment']):>10}")  # fmt: skip
        print(f"{'layer ' + str(a['layer']) + ' σmax':<28}"
              f"{fmt(a['sigma_max_mean']):>13}{fmt(b['sigma_max_mean']):>10}")  # fmt: skip
    print(f"wall time {wall:.0f} s")
