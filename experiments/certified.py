"""Certified robustness: ViT vs DiffViT, naturally, PGD- and certifiably trained, by depth.

    diffjax run certified --config=certified:mini
    diffjax run certified --config=certified:cpu --data-dir DIR

Zoo models of one recipe (``experiments/configs/certified.py``): every depth of ``depths`` ×
{ViT, parameter-matched DiffViT} × ``trainings`` (``none``, ``pgd``, ``ibp``/``crown-ibp``) ×
``seeds``, all of one architecture (``friendly``: ReLU, BatchNorm, mean pooling) in the
per-layer layout the verifier traces. On the first ``examples`` test images of each model:

* clean accuracy; PGD robust accuracy at every ε of ``eps_linf`` (ℓ∞) and ``eps_l2`` (ℓ2);
  AutoAttack robust accuracy at ``eps_linf`` (first ``autoattack_examples`` images);
* certified accuracy at the same ε by :func:`diffjax.verify.margin_lower_bounds` with
  ``verify_method`` (float64): an image is certified iff it is correctly classified and every
  margin lower bound z_c − z_j (j ≠ c) over B_p(x, ε) ∩ [0, 1]^d is > 0;
* every rate with its Wilson 95 % interval, per seed and pooled over seeds (images summed);
* on the certified models (first seed): negative-alignment frequency, exact σmax of each
  attention layer and λ (:func:`diffjax.analysis.layer_summary`);
* randomized smoothing (:func:`diffjax.analysis.smoothing.certify`, the ℓ2 baseline) of the
  natural models (first seed) at every σ of ``sigmas``, certified accuracy at ``eps_l2``.

Writes results/certified/<preset>/results.json and summary.csv; each model's measures and each
smoothing run is a part under parts/ (a rerun computes only the missing ones).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import analysis as an
from diffjax import attacks, records, verify
from diffjax.analysis import smoothing as S
from diffjax.attack_config import check_eps
from diffjax.attacks.accounting import wilson_interval
from diffjax.config import ROBUST_TRAINING, check_int, check_number
from diffjax.experiments.common import Context, fmt, pgd_asr, run_attack, write_results
from diffjax.experiments.configs import ConfigError, recipes
from diffjax.experiments.zoo import NAMES, Zoo
from diffjax.verify import radii as R

ATTENTIONS = ("softmax", "diff")
LABELS = {"softmax": "ViT", "diff": "DiffViT"}
NORMS = ("linf", "l2")
# The verification-friendly ViT (docs/certified.md): ReLU and BatchNorm have tight linear
# relaxations, and mean pooling avoids bounding one token alone; LayerNorm's 1/σ is unbounded.
FRIENDLY = dict(activation="relu", norm="batchnorm", pool="mean")
CERTIFIED_TRAINING = ("ibp", "crown-ibp")


def eps_label(norm: str, eps: float) -> str:
    """ε as the summary names it: ℓ∞ in 1/255 units (``2`` = 2/255), ℓ2 as is."""
    return f"{eps * 255:g}" if norm == "linf" else f"{eps:g}"


def check(config) -> None:
    """Refuse a bad value of the experiment's own fields, naming the field, before any data,
    model or compilation (the recipe is checked when the config is loaded).

    Raises:
      ConfigError: ``--config.FIELD: what is wrong``.
    """

    def bad(field, message):
        raise ConfigError(f"--config.{field}: {message}")

    def ints(field, low, allow_empty=False):
        values = tuple(config[field])
        if not values and not allow_empty:
            bad(field, "must not be empty")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(field, f"must hold integers >= {low}, got {v!r}")
        if len(set(values)) != len(values):
            bad(field, f"has a repeated value: {values}")

    ints("depths", 1)
    ints("seeds", 0)
    trainings = tuple(config.trainings)
    if not trainings or any(t not in ROBUST_TRAINING for t in trainings):
        bad("trainings", f"must be a non-empty tuple of {ROBUST_TRAINING}, got {trainings}")
    if len(set(trainings)) != len(trainings):
        bad("trainings", f"has a repeated value: {trainings}")
    for norm in NORMS:
        field = f"eps_{norm}"
        values = tuple(config[field])
        if not values or any(not (isinstance(e, int | float) and 0 < e) for e in values):
            bad(field, f"must be a non-empty tuple of radii > 0, got {values}")
        if len(set(values)) != len(values):
            bad(field, f"has a repeated value: {values}")
        for e in values:  # ℓ∞ above 1 is a [0, 255]-scale budget given by mistake
            try:
                check_eps(e, norm)
            except ValueError as err:
                bad(field, str(err))
    try:
        R.check_method(config.verify_method, "verify_method", verify.METHODS)
    except ValueError as e:
        raise ConfigError(f"--config.{e}") from None
    for field, low in (("examples", 1), ("verify_batch", 1), ("analysis_examples", 1),
                       ("pgd_steps", 1), ("pgd_restarts", 1), ("autoattack_examples", 0),
                       ("smoothing_examples", 0), ("train_pgd_steps", 1)):  # fmt: skip
        try:
            check_int(field, config[field], low)
        except ValueError as e:
            bad(field, str(e))
    for sigma in config.sigmas:
        try:
            check_number("sigmas", sigma, 0, low_open=True)
        except ValueError as e:
            bad("sigmas", str(e))
    for field in ("autoattack_examples", "analysis_examples", "smoothing_examples"):
        if config[field] > config.examples:
            bad(field, f"{config[field]} exceeds examples ({config.examples})")
    for training in trainings:  # every model's training config is valid (TrainConfig's checks)
        try:
            recipe(config, training)
        except ValueError as e:
            raise ConfigError(f"--config (the {training!r} models): {e}") from None


def recipe(config, training: str):
    """The zoo recipe of the ``training`` models: :class:`~diffjax.config.TrainConfig`."""
    base = recipes.train_config(config.train)
    model = base.model.replace(scan_layers=False, remat=False,
                               **(FRIENDLY if config.friendly else {}))  # fmt: skip
    if training == "none":
        return base.replace(model=model)
    robust = dict(robust_training=training, robust_eps=float(config.train_eps),
                  robust_warmup_epochs=0.0, robust_ramp_epochs=float(config.ramp_epochs),
                  robust_kappa_start=1.0, robust_kappa_end=float(config.kappa_end))  # fmt: skip
    if training == "pgd":
        robust["pgd_steps"] = config.train_pgd_steps
    return base.replace(model=model, **robust)


def share(flags) -> dict:
    """A rate of per-image 0/1 ``flags``: ``{"k", "n", "rate", "ci95"}`` (Wilson 95 %)."""
    flags = np.asarray(flags, dtype=int)
    k, n = int(flags.sum()), int(flags.size)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": wilson_interval(k, n)}


def certify(model, data, eps_list, norm: str, config) -> list[dict]:
    """Per ε: the smallest margin lower bound min_{j≠c} lb(z_c − z_j) of each image over
    B_norm(x, ε) ∩ [0, 1]^d (pixels in [0, 1]; float64 model and images): ``{"eps",
    "margin_bound": [n]}``. The image is certified at ε iff correct and its bound is > 0."""
    labels = np.asarray(data.labels)
    out = []
    with jax.enable_x64(True):
        m = an.with_dtype(model, "float64")
        x = jnp.asarray(data.images, jnp.float64) / 255.0
        for eps in eps_list:
            low = np.asarray(verify.margin_lower_bounds(
                m, x, jnp.asarray(labels), float(eps), norm, config.verify_method,
                batch_size=config.verify_batch))  # fmt: skip
            others = np.arange(low.shape[1])[None, :] != labels[:, None]
            bound = np.min(np.where(others, low, np.inf), axis=1)
            out.append({"eps": float(eps), "margin_bound": bound.tolist()})
    return out


def measure(model, data, config, *, key, name: str, quiet: bool, certified_model: bool) -> dict:
    """Every per-image measure of one model on ``data`` (see the module docstring)."""
    out = {"attacks": {}, "certified": {}}
    for norm in NORMS:
        out["attacks"][norm] = pgd_asr(model, data, config[f"eps_{norm}"], steps=config.pgd_steps,
                                       restarts=config.pgd_restarts, norm=norm, key=key,
                                       batch_size=config.batch_size, desc=f"PGD-{norm} {name}",
                                       quiet=quiet)  # fmt: skip
        out["certified"][norm] = certify(model, data, config[f"eps_{norm}"], norm, config)
    out["clean_correct"] = out["attacks"]["linf"][0]["clean_correct"]
    aa = data.take(config.autoattack_examples) if config.autoattack_examples else None
    out["autoattack"] = [] if aa is None else [
        {"eps": float(eps), **run_attack(
            attacks.model_function(model), aa, attacks.autoattack,
            attacks.AutoAttackConfig(float(eps), **config.autoattack), key=key,
            batch_size=config.batch_size, desc=f"AutoAttack {name} ε={eps * 255:g}/255",
            quiet=quiet)}
        for eps in config.eps_linf
    ]  # fmt: skip
    if certified_model:
        out["layers"] = an.layer_summary(model, data.images[: config.analysis_examples], key=key)
    return out


def rates(m: dict) -> dict:
    """The rates of one model's (or seed-pooled models') per-image values, by summary name:
    ``clean``, ``pgd_<norm>_<ε>``, ``autoattack_linf_<ε>``, ``certified_<norm>_<ε>``."""
    clean = np.asarray(m["clean_correct"], bool)
    out = {"clean": share(clean)}
    for norm in NORMS:
        for a in m["attacks"][norm]:
            out[f"pgd_{norm}_{eps_label(norm, a['eps'])}"] = share(a["adv_correct"])
        for c in m["certified"][norm]:
            cert = clean & (np.asarray(c["margin_bound"]) > 0)
            out[f"certified_{norm}_{eps_label(norm, c['eps'])}"] = share(cert)
    for a in m["autoattack"]:
        out[f"autoattack_linf_{eps_label('linf', a['eps'])}"] = share(a["adv_correct"])
    return out


def pooled(per_seed: list[dict]) -> dict:
    """The per-image values of several seeds' models concatenated (seed after seed)."""
    first = per_seed[0]
    cat = lambda get: [v for m in per_seed for v in get(m)]  # noqa: E731
    return {
        "clean_correct": cat(lambda m: m["clean_correct"]),
        "attacks": {norm: [{"eps": a["eps"], "adv_correct": cat(lambda m, i=i, n=norm:
                                                                m["attacks"][n][i]["adv_correct"])}
                           for i, a in enumerate(first["attacks"][norm])]
                    for norm in NORMS},
        "certified": {norm: [{"eps": c["eps"], "margin_bound": cat(
                                  lambda m, i=i, n=norm: m["certified"][n][i]["margin_bound"])}
                             for i, c in enumerate(first["certified"][norm])]
                      for norm in NORMS},
        "autoattack": [{"eps": a["eps"], "adv_correct": cat(lambda m, i=i:
                                                            m["autoattack"][i]["adv_correct"])}
                       for i, a in enumerate(first["autoattack"])],
    }  # fmt: skip


def smoothed(model, data, config, sigma: float, key) -> dict:
    """CERTIFY on each image of ``data``: labels (−1 abstain), ℓ2 radii, correctness."""
    fn = attacks.model_function(model)
    labels, radius = [], []
    for i in range(len(data)):
        image = jnp.asarray(data.images[i], jnp.float32) / 255.0
        c = S.certify(
            fn, image, jax.random.fold_in(key, i), sigma=float(sigma), n0=config.smoothing_n0,
            n=config.smoothing_n, alpha=config.smoothing_alpha,
            num_classes=model.config.num_classes, batch=config.smoothing_batch,
        )  # fmt: skip
        labels.append(int(c.label))
        radius.append(float(c.radius) if c.label == int(data.labels[i]) else 0.0)
    correct = [int(lab == int(y)) for lab, y in zip(labels, data.labels, strict=True)]
    return {"sigma": float(sigma), "label": labels, "radius": radius, "correct": correct}


def smoothing_rates(s: dict, eps_l2) -> dict:
    """Smoothed accuracy (``clean``: the certified label is right) and certified accuracy at
    each ℓ2 ε (radius ≥ ε; the radius of a wrong or abstained image is 0)."""
    radius = np.asarray(s["radius"])
    return {"clean": share(s["correct"]),
            **{f"l2_{eps_label('l2', e)}": share(radius >= e) for e in eps_l2}}  # fmt: skip


def run(config, ctx: Context) -> dict:
    check(config)
    zoos = {t: Zoo(recipe(config, t), ctx) for t in config.trainings}
    out_dir = ctx.results(config.experiment, config.preset)
    parts = out_dir / "parts"
    train, test = zoos[config.trainings[0]].data()
    data = test.take(config.examples)

    def model_part(depth, attention, training, seed):
        name = f"{LABELS[attention]} D={depth} {training} seed {seed}"
        model, summary, _ = zoos[training].model(train, test, attention, seed=seed, depth=depth)
        certified_model = training in CERTIFIED_TRAINING and seed == config.seeds[0]
        return {"run": summary["run"],
                **measure(model, data, config, key=jax.random.key(seed), name=name,
                          quiet=ctx.quiet, certified_model=certified_model)}  # fmt: skip

    def smoothing_part(depth, attention, sigma):
        seed = config.seeds[0]
        model, summary, _ = zoos["none"].model(train, test, attention, seed=seed, depth=depth)
        s = smoothed(model, data.take(config.smoothing_examples), config, sigma,
                     jax.random.fold_in(jax.random.key(seed), 1))  # fmt: skip
        return {"run": summary["run"], **s}

    models, rows = [], []
    for depth in config.depths:
        for attention in ATTENTIONS:
            for training in config.trainings:
                tag = f"{NAMES[attention]}_d{depth}_{training}"
                per_seed = [records.cached(parts / f"{tag}_s{seed}.json",
                                           lambda s=seed, d=depth, a=attention, t=training:
                                           model_part(d, a, t, s))
                            for seed in config.seeds]  # fmt: skip
                entry = {"model": NAMES[attention], "depth": depth, "training": training,
                         "seeds": [{"seed": s, **m, "rates": rates(m)}
                                   for s, m in zip(config.seeds, per_seed, strict=True)],
                         "rates": rates(pooled(per_seed))}  # fmt: skip
                if training == "none" and config.smoothing_examples:
                    entry["smoothing"] = []
                    for sigma in config.sigmas:
                        s = records.cached(parts / f"{tag}_smooth_{sigma:g}.json",
                                           lambda d=depth, a=attention, sg=sigma:
                                           smoothing_part(d, a, sg))  # fmt: skip
                        entry["smoothing"].append({**s, "rates": smoothing_rates(s, config.eps_l2)})
                models.append(entry)
                rows.append(summary_row(entry))
    body = {"dataset": zoos[config.trainings[0]].recipe.dataset, "models": models,
            "summary": rows}  # fmt: skip
    result = write_results(out_dir, config, body, rows)
    print_table(config, rows)
    print(f"results: {out_dir / 'results.json'}")
    return result


def summary_row(entry: dict) -> dict:
    """One summary row: a model's seed-pooled rates with their Wilson intervals, and for the
    certified models the mean over layers of alignment, σmax and λ (first seed)."""
    row = {"model": entry["model"], "depth": entry["depth"], "training": entry["training"],
           "seeds": len(entry["seeds"])}  # fmt: skip
    for name, r in entry["rates"].items():
        lo, hi = r["ci95"]
        row |= {name: r["rate"], f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_n": r["n"]}
    for s in entry.get("smoothing", []):
        for name, r in s["rates"].items():
            row[f"smoothed_s{s['sigma']:g}_{name}"] = r["rate"]
    layers = entry["seeds"][0].get("layers")
    if layers:
        row["negative_alignment"] = float(np.mean([la["negative_alignment"] for la in layers]))
        row["sigma_max_mean"] = float(np.mean([la["sigma_max_mean"] for la in layers]))
        lams = [la["lambda"] for la in layers if la.get("lambda") is not None]
        row["lambda"] = float(np.mean(lams)) if lams else None
    return row


def print_table(config, rows: list[dict]) -> None:
    """The rates (seed-pooled) of every model, one line each."""
    names = []
    for r in rows:  # smoothing (natural models) and layer columns (certified ones) are partial
        names += [k for k in r if k not in ("model", "depth", "training", "seeds", *names)
                  and not k.endswith(("_lo", "_hi", "_n"))]  # fmt: skip
    print(f"\nCertified robustness ({config.preset}; {config.verify_method}; seeds "
          f"{tuple(config.seeds)}; ℓ∞ ε in 1/255)")  # fmt: skip
    print(f"{'model':<24}" + "".join(f"{n[:18]:>19}" for n in names))
    for r in rows:
        label = f"{r['model']} D={r['depth']} {r['training']}"
        print(f"{label:<24}" + "".join(f"{fmt(r.get(n)):>19}" for n in names))
