"""Certified robustness: ViT, DiffViT and the Lipschitz-regularised DiffViT (open question 2).

    diffjax run certified --config=certified:mini
    diffjax run certified --config=certified:cpu --data-dir DIR

Three zoo models of one recipe (depth 1; same seed and data): the ViT, the DiffViT, and the
DiffViT trained with the attention-Lipschitz penalty (``TrainConfig.lipschitz_penalty`` = the
config's ``penalty``). For each:

* clean accuracy, PGD-ℓ∞ ASR, negative-alignment frequency and exact σmax of the attention
  layer (:func:`diffjax.analysis.layer_summary`);
* certified accuracy versus radius by the interval/gradient certificate
  (:func:`diffjax.analysis.certified.certified_radius`, float64), ℓ2 and ℓ∞ balls in pixels;
* the certified radius per image by bisection with the config's ``verify_method`` (``interval``
  or a :mod:`diffjax.verify` method: ``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``;
  :func:`diffjax.verify.radii.certified_radii`) and its certified-accuracy curve, ℓ2 and ℓ∞;
* randomized smoothing (:func:`diffjax.analysis.smoothing.certify`) at every σ of ``sigmas``,
  smoothing the model trained with Gaussian noise of that σ when ``noise_training``;
* per image, the ratio of certified ℓ2 radii ViT / DiffViT next to the paper's predicted factor
  γ(1 + λρ) (γ, ρ, λ of the DA layer's CLS row w.r.t. the image, ``docs/definitions.md``).

Writes results/certified/<preset>/results.json and summary.csv (resumable parts).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from diffjax import analysis as an
from diffjax import attacks, records
from diffjax.analysis import certified as C
from diffjax.analysis import smoothing as S
from diffjax.experiments.common import Context, fmt, pgd_asr, write_results
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import Zoo
from diffjax.train import evaluate
from diffjax.verify import radii as R

# name → (attention, regularised)
MODELS = {"vit": ("softmax", False), "diffvit": ("diff", False), "diffvit_reg": ("diff", True)}
LABELS = {"vit": "ViT", "diffvit": "DiffViT", "diffvit_reg": "DiffViT+reg"}
NORMS = ("l2", "linf")


@functools.partial(jax.jit, static_argnames=("norm", "radii"))
def _certify(model, images, labels, norm, radii):
    def one(xy):
        x, y = xy
        c = C.certified_radius(model, x, y, norm, radii=np.array(radii))
        # The first-order radius min_j g_j(x)/‖∇g_j(x)‖_q: what the certificate tends to as
        # the ball shrinks; a local estimate, not a certificate (it ignores curvature).
        g = lambda z: an.logits(model, z)[y] - an.logits(model, z)  # noqa: E731
        grads = jax.jacrev(g)(x).reshape(g(x).shape[0], -1)
        dual = jnp.linalg.norm(grads, 2 if norm == "l2" else 1, axis=1)
        others = jnp.arange(grads.shape[0]) != y
        first = jnp.min(jnp.where(others, g(x) / jnp.where(others, dual, 1.0), jnp.inf))
        return {"radius": c.radius, "by_interval": c.by_interval,
                "by_gradient": c.by_gradient, "margin": c.margin,
                "first_order": jnp.where(c.margin > 0, first, 0.0)}  # fmt: skip

    return jax.lax.map(one, (images, labels))


def certificates(model, images, labels, norm: str, radii) -> dict:
    """Per-image interval/gradient certificates over the grid ``radii`` (float64): lists."""
    with jax.enable_x64(True):
        m = an.with_dtype(model, "float64")
        x = jnp.asarray(images, jnp.float64) / 255.0
        out = _certify(m, x, jnp.asarray(labels), norm, tuple(float(r) for r in radii))
        return {k: np.asarray(v).astype(float).tolist() for k, v in out.items()}


def curve_radii(hi: float, points: int) -> list[float]:
    """The ε of a certified-accuracy curve: ``points`` equal steps up to the bisection's hi."""
    return (hi * np.arange(1, points + 1) / points).tolist()


def bisection(model, images, labels, norm: str, config) -> dict:
    """Per-image certified radii by bisection with ``config.verify_method`` (float64), and the
    certified-accuracy curve over :func:`curve_radii`: lists."""
    hi = float(config[f"verify_hi_{norm}"])
    with jax.enable_x64(True):
        m = an.with_dtype(model, "float64")
        x = jnp.asarray(images, jnp.float64) / 255.0
        radius = R.certified_radii(m, x, jnp.asarray(labels), norm=norm,
                                   method=config.verify_method, hi=hi,
                                   steps=config.verify_steps)  # fmt: skip
    eps = curve_radii(hi, config.curve_points)
    return {"method": config.verify_method, "hi": hi, "steps": config.verify_steps,
            "radius": radius.tolist(), "eps": eps,
            "certified_accuracy": R.certified_accuracy(radius, eps)}  # fmt: skip


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


def branch_statistics(diff_model, base_model, images) -> dict:
    """Per image: γ, ρ, λ and cos θ of the DA layer 0 (CLS row, w.r.t. the image) against the
    ViT, and the predicted radius factor γ(1 + λρ) (Theorem 1's upper end times γ)."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    g_da = an.branch_grams(diff_model, x, 0, wrt="image", row=0)
    g_base = an.branch_grams(base_model, x, 0, wrt="image", row=0)
    gamma = an.gamma(g_da, g_base)[:, 0]
    a = an.alignment(an.reduce_gram(g_da, "heads"))
    rho, lam, cos = a.rho[:, 0], a.lam[:, 0], a.cos[:, 0]
    pred = gamma * (1 + lam * rho)
    return {k: np.asarray(v).astype(float).tolist()
            for k, v in dict(gamma=gamma, rho=rho, lam=lam, cos=cos, predicted=pred).items()}


def radius_ratios(base: dict, other: dict, stats: dict, key: str = "radius") -> dict:
    """r_ViT / r_DA per image (both > 0) against γ(1 + λρ); ``key`` ``"radius"`` (certified,
    as coarse as the grid) or ``"first_order"``."""
    rb, ro = np.asarray(base[key]), np.asarray(other[key])
    ok = (rb > 0) & (ro > 0)
    measured = rb[ok] / ro[ok]
    predicted = np.asarray(stats["predicted"])[ok]
    out = {"images": int(ok.sum()), "measured": measured.tolist(),
           "predicted": predicted.tolist()}  # fmt: skip
    if ok.sum() >= 1:
        out |= {"measured_median": float(np.median(measured)),
                "predicted_median": float(np.median(predicted)),
                "log_ratio_median": float(np.median(np.log(measured / predicted)))}  # fmt: skip
    if ok.sum() >= 3:
        r = scipy.stats.spearmanr(measured, predicted)
        out |= {"spearman": None if np.isnan(r.statistic) else float(r.statistic),
                "p_value": None if np.isnan(r.pvalue) else float(r.pvalue)}  # fmt: skip
    return out


def run(config, ctx: Context) -> dict:
    R.check_method(config.verify_method, "verify_method")
    recipe = recipes.train_config(config.train)
    reg = recipe.replace(lipschitz_penalty=float(config.penalty),
                         lipschitz_iters=config.penalty_iters,
                         lipschitz_examples=config.penalty_examples)  # fmt: skip
    zoo, reg_zoo = Zoo(recipe, ctx), Zoo(reg, ctx)
    out_dir = ctx.results(config.experiment, config.preset)
    train, test = zoo.data()
    key = jax.random.key(config.seed)
    certified = test.take(config.certify_examples)

    def trained(name, noise=0.0):
        attention, regularised = MODELS[name]
        z = reg_zoo if regularised else zoo
        if noise:
            z = Zoo(z.recipe.replace(noise_sigma=float(noise)), ctx)
        return z.model(train, test, attention, seed=config.seed)

    def part(name):
        model, summary, _ = trained(name)
        out = {
            "run": summary["run"],
            "clean_accuracy": evaluate(model, test.take(config.eval_examples))["test_accuracy"],
            "pgd": pgd_asr(model, test.take(config.attack_examples), config.eps,
                           steps=config.pgd_steps, key=key, desc=f"PGD {LABELS[name]}",
                           quiet=ctx.quiet),
            "layers": an.layer_summary(model, test.images[: config.analysis_examples], key=key),
        }  # fmt: skip
        for norm in NORMS:
            radii = config.radii_l2 if norm == "l2" else config.radii_linf
            out[f"certified_{norm}"] = certificates(model, certified.images, certified.labels,
                                                    norm, radii)  # fmt: skip
            out[f"bisection_{norm}"] = bisection(model, certified.images, certified.labels,
                                                 norm, config)  # fmt: skip
        return out

    def smoothing_part(name, sigma):
        model, summary, _ = trained(name, sigma if config.noise_training else 0.0)
        data = test.take(config.smoothing_examples)
        return {"run": summary["run"], "noise_trained": bool(config.noise_training),
                "clean_accuracy": evaluate(model, test.take(config.eval_examples))["test_accuracy"],
                **smoothed(model, data, config, sigma, jax.random.fold_in(key, 1))}  # fmt: skip

    parts = out_dir / "parts"
    models = {}
    for name in MODELS:
        models[name] = records.cached(parts / f"{name}.json", lambda n=name: part(n))
        models[name]["smoothing"] = [
            records.cached(parts / f"{name}_smooth_{s:g}.json",
                           lambda n=name, s=s: smoothing_part(n, s))
            for s in config.sigmas
        ]  # fmt: skip

    def stats_part():
        base, _, _ = trained("vit")
        return {name: branch_statistics(trained(name)[0], base, certified.images)
                for name in ("diffvit", "diffvit_reg")}  # fmt: skip

    stats = records.cached(parts / "branch_statistics.json", stats_part)
    ratios = {name: {f"{norm}{suffix}": radius_ratios(models["vit"][f"certified_{norm}"],
                                                      models[name][f"certified_{norm}"],
                                                      stats[name], key)
                     for norm in NORMS
                     for suffix, key in (("", "radius"), ("_first_order", "first_order"))}
              for name in ("diffvit", "diffvit_reg")}  # fmt: skip

    rows = []
    for name, m in models.items():
        row = {"model": name, "clean_accuracy": m["clean_accuracy"],
               "negative_alignment": m["layers"][0]["negative_alignment"],
               "sigma_max_mean": m["layers"][0]["sigma_max_mean"],
               "lambda": m["layers"][0]["lambda"]}  # fmt: skip
        row |= {f"pgd_asr_{round(a['eps'] * 255)}": a["summary"]["asr"] for a in m["pgd"]}
        for norm in NORMS:
            report = config.report_l2 if norm == "l2" else config.report_linf
            acc = R.certified_accuracy(m[f"certified_{norm}"]["radius"], report)
            row |= {f"certified_{norm}_{r:g}": a for r, a in zip(report, acc, strict=True)}
            b = m[f"bisection_{norm}"]
            row[f"{b['method']}_{norm}_median_radius"] = float(np.median(b["radius"]))
        for s in m["smoothing"]:
            acc = R.certified_accuracy(s["radius"], config.smoothing_radii)
            row |= {f"smoothed_s{s['sigma']:g}_r{r:g}": a
                    for r, a in zip(config.smoothing_radii, acc, strict=True)}  # fmt: skip
        rows.append(row)
    body = {"dataset": recipe.dataset, "models": models, "branch_statistics": stats,
            "radius_ratios": ratios, "summary": rows}  # fmt: skip
    result = write_results(out_dir, config, body, rows)

    print(f"\nCertified robustness, {recipe.dataset} ({config.preset}; depth "
          f"{recipe.model.depth}, seed {config.seed})")  # fmt: skip
    print(f"{'':<26}" + "".join(f"{LABELS[n]:>13}" for n in models))
    for key_ in rows[0]:
        if key_ == "model":
            continue
        print(f"{key_:<26}" + "".join(f"{fmt(r[key_]):>13}" for r in rows))
    for name, by_norm in ratios.items():
        for norm, r in by_norm.items():
            if r["images"]:
                print(f"radius ViT/{LABELS[name]} ({norm}, {r['images']} images): median "
                      f"{r['measured_median']:.3f}; predicted γ(1+λρ) median "
                      f"{r['predicted_median']:.3f}")  # fmt: skip
    print(f"results: {out_dir / 'results.json'}")
    return result
