"""Certified robustness: ViT vs DiffViT, naturally, PGD- and certifiably trained, by depth.

    diffjax run certified --config=certified:mini
    diffjax run certified --config=certified:cpu --data-dir DIR

Zoo models of one recipe (``experiments/configs/certified.py``): every depth of ``depths`` ×
{ViT, parameter-matched DiffViT} × ``trainings`` (``none``, ``pgd``, ``ibp``/``crown-ibp``) ×
``seeds``, all of one architecture (``friendly``: ReLU, BatchNorm, mean pooling) in the
per-layer layout the verifier traces. On the first ``examples`` test images of each model:

* clean accuracy; PGD robust accuracy at every ε of ``eps_linf`` (ℓ∞) and ``eps_l2`` (ℓ2);
  AutoAttack robust accuracy at ``eps_linf`` (first ``autoattack_examples`` images);
* certified accuracy at the same ε by :func:`diffjax.verify.margin_lower_bounds` (float64):
  an image is certified iff it is correctly classified and every margin lower bound z_c − z_j
  (j ≠ c) over B_p(x, ε) ∩ [0, 1]^d is > 0 by one of the ``verify_methods`` run at the
  model's depth (``verify_max_depth``), cheapest first, each on the images the ones before
  left uncertified (:func:`certify`);
* every rate with its Wilson 95 % interval, per seed and pooled over seeds (images summed);
* on every model of the first seed: negative-alignment frequency, exact σmax of each
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
from diffjax.attacks.accounting import difference_interval, wilson_interval
from diffjax.config import ROBUST_TRAINING, check_int, check_number
from diffjax.experiments.common import Context, fmt, pgd_asr, run_attack, write_results
from diffjax.experiments.configs import ConfigError, recipes
from diffjax.experiments.zoo import NAMES, Zoo
from diffjax.verify import radii as R

ATTENTIONS = ("softmax", "diff")
LABELS = {"softmax": "ViT", "diff": "DiffViT"}
TITLES = {NAMES[a]: LABELS[a] for a in ATTENTIONS}  # by zoo name
NORMS = ("linf", "l2")
# The verification-friendly ViT (docs/certified.md): ReLU and BatchNorm have tight linear
# relaxations, and mean pooling avoids bounding one token alone; LayerNorm's 1/σ is unbounded.
FRIENDLY = dict(activation="relu", norm="batchnorm", pool="mean")


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
        if list(values) != sorted(set(values)):
            bad(field, f"must ascend without repeats (a certificate at one ε is sought only for "
                       f"the images certified at the ε before), got {values}")  # fmt: skip
        for e in values:  # ℓ∞ above 1 is a [0, 255]-scale budget given by mistake
            try:
                check_eps(e, norm)
            except ValueError as err:
                bad(field, str(err))
    methods = tuple(config.verify_methods)
    if not methods or len(set(methods)) != len(methods):
        bad("verify_methods", f"must be a non-empty tuple without repeats, got {methods}")
    for method in methods:
        try:
            R.check_method(method, "verify_methods", verify.METHODS)
        except ValueError as e:
            raise ConfigError(f"--config.{e}") from None
    tops = tuple(config.verify_max_depth)
    if len(tops) != len(methods):
        bad("verify_max_depth", f"must give one depth per method of verify_methods {methods}, "
                                f"got {tops}")  # fmt: skip
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tops):
        bad("verify_max_depth", f"must hold integers >= 1, got {tops}")
    uncovered = [d for d in config.depths if not cascade(config, d)]
    if uncovered:
        bad("verify_max_depth", f"leaves depth {uncovered[0]} without a method: {tops}")
    for field, low in (("examples", 1), ("analysis_examples", 1),
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


def cascade(config, depth: int) -> tuple[str, ...]:
    """The verifier's methods run on a depth-``depth`` model, cheapest first: those of
    ``verify_methods`` whose ``verify_max_depth`` entry is ≥ ``depth``."""
    return tuple(m for m, top in zip(config.verify_methods, config.verify_max_depth, strict=True)
                 if depth <= top)  # fmt: skip


def certify(model, data, eps_list, norm: str, attacked, methods, clean) -> list[dict]:
    """Per ε: the best (largest) lower bound min_{j≠c} lb(z_c − z_j) of each image over
    B_norm(x, ε) ∩ [0, 1]^d (pixels in [0, 1]; float64 model and images) that ``methods``
    give, each method run only on the images the methods before it left uncertified:
    ``{"eps", "margin_bound": [n], "method": [n]}``. ``method`` names the method that certified
    the image (its bound > 0), else None. An image is certified at ε iff its bound is > 0.

    Not bounded (bound and method None), which only ever withholds a certificate: a
    misclassified image (``clean`` false) and an image whose attack at ε found an adversarial
    example (``attacked[k]["adv_correct"]`` false; the float32 attack, re-checked outside it),
    for which no certificate can exist; and an image not certified at the ε before (``eps_list``
    ascends): its ball lies inside this one, so no certificate is expected here. Every call
    bounds exactly :data:`diffjax.verify.BATCH_SIZES` images of a method (the last call of a
    method pads with its own images), so each method compiles once per model.
    """
    labels = np.asarray(data.labels)
    out = []
    with jax.enable_x64(True):
        m = an.with_dtype(model, "float64")
        x = jnp.asarray(data.images, jnp.float64) / 255.0
        for eps, attack in zip(eps_list, attacked, strict=True):
            if attack["eps"] != eps:
                raise ValueError(f"certify: attack at eps {attack['eps']} given for eps {eps}")
            bound = np.full(len(labels), -np.inf)
            open_ = np.asarray(clean, bool) & np.asarray(attack["adv_correct"], bool)
            if out:  # the ε before: its certified images
                open_ &= np.array([b is not None and b > 0 for b in out[-1]["margin_bound"]])
            method = [None] * len(labels)
            for name in methods:
                todo = np.flatnonzero(open_ & ~(bound > 0))
                size = verify.BATCH_SIZES[name]
                for start in range(0, len(todo), size):
                    idx = todo[start : start + size]
                    pad = np.concatenate([idx, np.full(size - len(idx), idx[-1])])
                    low = np.asarray(verify.margin_lower_bounds(
                        m, x[pad], jnp.asarray(labels[pad]), float(eps), norm, name,
                        batch_size=size))[: len(idx)]  # fmt: skip
                    others = np.arange(low.shape[1])[None, :] != labels[idx, None]
                    best = np.min(np.where(others, low, np.inf), axis=1)
                    for i, b in zip(idx, best, strict=True):
                        if b > bound[i]:
                            bound[i] = b
                            if b > 0:
                                method[i] = name
            bounded = [float(b) if o else None for b, o in zip(bound, open_, strict=True)]
            out.append({"eps": float(eps), "margin_bound": bounded, "method": method})
    return out


def measure(model, data, config, *, key, name: str, quiet: bool, first_seed: bool) -> dict:
    """Every per-image measure of one model on ``data`` (see the module docstring)."""
    out = {"attacks": {}, "certified": {}}
    for norm in NORMS:
        out["attacks"][norm] = pgd_asr(model, data, config[f"eps_{norm}"], steps=config.pgd_steps,
                                       restarts=config.pgd_restarts, norm=norm, key=key,
                                       batch_size=config.batch_size, desc=f"PGD-{norm} {name}",
                                       quiet=quiet)  # fmt: skip
    out["clean_correct"] = out["attacks"]["linf"][0]["clean_correct"]
    for norm in NORMS:
        out["certified"][norm] = certify(model, data, config[f"eps_{norm}"], norm,
                                         out["attacks"][norm], cascade(config, model.config.depth),
                                         out["clean_correct"])  # fmt: skip
    aa = data.take(config.autoattack_examples) if config.autoattack_examples else None
    out["autoattack"] = [] if aa is None else [
        {"eps": float(eps), **run_attack(
            attacks.model_function(model), aa, attacks.autoattack,
            attacks.AutoAttackConfig(float(eps), **config.autoattack), key=key,
            batch_size=config.batch_size, desc=f"AutoAttack {name} ε={eps * 255:g}/255",
            quiet=quiet)}
        for eps in config.eps_linf
    ]  # fmt: skip
    if first_seed:
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
            cert = clean & np.array([b is not None and b > 0 for b in c["margin_bound"]])
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
        return {"run": summary["run"],
                **measure(model, data, config, key=jax.random.key(seed), name=name,
                          quiet=ctx.quiet, first_seed=seed == config.seeds[0])}  # fmt: skip

    def smoothing_part(depth, attention, sigma):
        seed = config.seeds[0]
        model, summary, _ = zoos["none"].model(train, test, attention, seed=seed, depth=depth)
        s = smoothed(model, data.take(config.smoothing_examples), config, sigma,
                     jax.random.fold_in(jax.random.key(seed), 1))  # fmt: skip
        return {"run": summary["run"], **s}

    def part(name: str, compute):
        """The part ``name``, computed if missing. Computing one compiles dozens of programs
        (training, attacks, the verifier's), dropped after it: a process keeps every executable
        it compiled, and a run's hundreds reach Linux's vm.max_map_count, where XLA's next
        compilation segfaults (docs/reliability.md)."""

        def compute_and_free():
            try:
                return compute()
            finally:
                jax.clear_caches()

        return records.cached(parts / name, compute_and_free)

    models, rows = [], []
    for depth in config.depths:
        for attention in ATTENTIONS:
            for training in config.trainings:
                tag = f"{NAMES[attention]}_d{depth}_{training}"
                per_seed = [part(f"{tag}_s{seed}.json", lambda s=seed, d=depth, a=attention,
                                 t=training: model_part(d, a, t, s))
                            for seed in config.seeds]  # fmt: skip
                entry = {"model": NAMES[attention], "depth": depth, "training": training,
                         "verify_methods": list(cascade(config, depth)),
                         "seeds": [{"seed": s, **m, "rates": rates(m)}
                                   for s, m in zip(config.seeds, per_seed, strict=True)],
                         "rates": rates(pooled(per_seed))}  # fmt: skip
                if training == "none" and config.smoothing_examples:
                    entry["smoothing"] = []
                    for sigma in config.sigmas:
                        s = part(f"{tag}_smooth_{sigma:g}.json",
                                 lambda d=depth, a=attention, sg=sigma: smoothing_part(d, a, sg))
                        entry["smoothing"].append({**s, "rates": smoothing_rates(s, config.eps_l2)})
                models.append(entry)
                rows.append(summary_row(entry))
    body = {"dataset": zoos[config.trainings[0]].recipe.dataset, "models": models,
            "gaps": gaps(models), "summary": rows}  # fmt: skip
    result = write_results(out_dir, config, body, rows)
    print_table(config, rows)
    print(f"results: {out_dir / 'results.json'}")
    return result


def gaps(models: list[dict]) -> list[dict]:
    """DiffViT − ViT of every seed-pooled rate, per depth and training: ``{"depth",
    "training", "rate", "vit", "diffvit", "gap", "ci95"}``, the interval Newcombe's for a
    difference of two independent proportions (:func:`difference_interval`)."""
    rates_of = {(m["depth"], m["training"], m["model"]): m["rates"] for m in models}
    out = []
    for (depth, training, model), vit in rates_of.items():
        if model != NAMES["softmax"]:
            continue
        diff = rates_of[depth, training, NAMES["diff"]]
        for name, a in vit.items():
            b = diff[name]
            out.append({"depth": depth, "training": training, "rate": name, "vit": a["rate"],
                        "diffvit": b["rate"], "gap": b["rate"] - a["rate"],
                        "ci95": difference_interval(b["k"], b["n"], a["k"], a["n"])})  # fmt: skip
    return out


def summary_row(entry: dict) -> dict:
    """One summary row: a model's seed-pooled rates with their Wilson intervals, and the mean
    over its layers of alignment, σmax and λ (first seed)."""
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


def _label(name: str) -> str:
    """A rate's column heading: ``certified_linf_1`` → ``cert. ℓ∞ 1/255``."""
    kind, _, rest = name.partition("_")
    if not rest:
        return kind
    norm, _, eps = rest.partition("_")
    short = {"pgd": "PGD", "autoattack": "AA", "certified": "cert."}[kind]
    return f"{short} ℓ∞ {eps}/255" if norm == "linf" else f"{short} ℓ2 {eps}"


def report(result: dict) -> str:
    """The Markdown tables docs/certified.md quotes, from saved results: the seed-pooled rates
    of every model; DiffViT − ViT of the clean and certified accuracies with 95 % intervals;
    alignment, σmax and λ of every model (first seed); smoothing of the natural
    models (first seed)."""
    models, c = result["models"], result["config"]
    names = [n for n in models[0]["rates"]]
    order = ["clean"] + sorted(
        (n for n in names if n != "clean"),
        key=lambda n: (n.split("_")[1] != "linf", float(n.split("_")[2]),
                       ["pgd", "autoattack", "certified"].index(n.split("_")[0])))  # fmt: skip
    n = models[0]["rates"]["clean"]["n"]
    lines = [f"Seed-pooled rates, {n} images per model (seeds {tuple(c['seeds'])} × "
             f"{c['examples']} test images; AutoAttack on the first {c['autoattack_examples']} "
             "of each seed's):", "",
             "| model | depth | training | " + " | ".join(_label(k) for k in order) + " |",
             "|---|---|---|" + "---|" * len(order)]  # fmt: skip
    for m in models:
        cells = [fmt(m["rates"][k]["rate"]) for k in order]
        lines.append(f"| {TITLES[m['model']]} | {m['depth']} | {m['training']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "DiffViT − ViT, seed-pooled, with Newcombe's 95 % interval:", "",
              "| depth | training | rate | ViT | DiffViT | DiffViT − ViT [95 %] |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for g in result["gaps"]:
        if g["rate"] == "clean" or g["rate"].startswith("certified"):
            lo, hi = g["ci95"]
            lines.append(f"| {g['depth']} | {g['training']} | {_label(g['rate'])} | "
                         f"{fmt(g['vit'])} | {fmt(g['diffvit'])} | "
                         f"{g['gap']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")  # fmt: skip
    lines += ["", f"Every model of seed {c['seeds'][0]} ({c['analysis_examples']} images), "
              "mean over layers:", "",
              "| model | depth | training | negative alignment | σmax | λ |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["summary"]:
        if "negative_alignment" in r:
            lines.append(f"| {TITLES[r['model']]} | {r['depth']} | {r['training']} | "
                         f"{fmt(r['negative_alignment'])} | {fmt(r['sigma_max_mean'], '.3g')} | "
                         f"{fmt(r['lambda'], '.4f')} |")  # fmt: skip
    smoothing = [m for m in models if m.get("smoothing")]
    if smoothing:
        heads = list(smoothing[0]["smoothing"][0]["rates"])
        lines += ["", f"Randomized smoothing of the natural models (seed {c['seeds'][0]}, "
                  f"{c['smoothing_examples']} images, n = {c['smoothing_n']}): smoothed accuracy "
                  "and ℓ2 certified accuracy:", "",
                  "| model | depth | σ | " + " | ".join(
                      "smoothed" if h == "clean" else f"cert. ℓ2 {h[3:]}" for h in heads) + " |",
                  "|---|---|---|" + "---|" * len(heads)]  # fmt: skip
        for m in smoothing:
            for sm in m["smoothing"]:
                cells = [fmt(sm["rates"][h]["rate"]) for h in heads]
                lines.append(f"| {TITLES[m['model']]} | {m['depth']} | {sm['sigma']:g} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(result: dict, rate: str, training: str) -> str:
    """One seed-pooled rate of ViT and DiffViT per depth, with Wilson intervals, and their
    difference with Newcombe's: the sentence REPRODUCTION.md row 13 quotes, e.g.
    ``depth 2: ViT 0.250 [0.195, 0.314], DiffViT 0.215 [0.164, 0.277], DiffViT − ViT −0.035
    [−0.115, +0.046]``."""
    out = []
    for g in result["gaps"]:
        if g["rate"] != rate or g["training"] != training:
            continue
        ci = {m["model"]: m["rates"][rate]["ci95"] for m in result["models"]
              if m["depth"] == g["depth"] and m["training"] == training}  # fmt: skip
        (vl, vh), (dl, dh), (gl, gh) = ci["vit"], ci["diffvit"], g["ci95"]
        out.append(f"depth {g['depth']}: ViT {g['vit']:.3f} [{vl:.3f}, {vh:.3f}], DiffViT "
                   f"{g['diffvit']:.3f} [{dl:.3f}, {dh:.3f}], DiffViT − ViT {g['gap']:+.3f} "
                   f"[{gl:+.3f}, {gh:+.3f}]")  # fmt: skip
    return "; ".join(out).replace("-", "−")


def print_table(config, rows: list[dict]) -> None:
    """The rates (seed-pooled) of every model, one line each."""
    names = []
    for r in rows:  # smoothing (natural models) and layer columns (certified ones) are partial
        names += [k for k in r if k not in ("model", "depth", "training", "seeds", *names)
                  and not k.endswith(("_lo", "_hi", "_n"))]  # fmt: skip
    print(f"\nCertified robustness ({config.preset}; {' > '.join(config.verify_methods)}; seeds "
          f"{tuple(config.seeds)}; ℓ∞ ε in 1/255)")  # fmt: skip
    print(f"{'model':<24}" + "".join(f"{n[:18]:>19}" for n in names))
    for r in rows:
        label = f"{r['model']} D={r['depth']} {r['training']}"
        print(f"{label:<24}" + "".join(f"{fmt(r.get(n)):>19}" for n in names))
