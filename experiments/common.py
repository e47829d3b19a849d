"""What the experiments share: where outputs go, progress bars, attacks over budgets, results."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from diffjax import attacks, records
from diffjax.checkpoint import write_json_atomic
from diffjax.data import Dataset
from diffjax.experiments import configs


@dataclasses.dataclass(frozen=True)
class Context:
    """Where a command writes and how it behaves; the same for every subcommand.

    Attributes:
      workdir: root of the outputs: ``runs/`` (trained models), ``results/<experiment>/<preset>/``
        (results.json, summary.csv, resumable ``parts/``) and ``figures/``.
      data_dir: where datasets are looked for (``None``: ``$DIFFJAX_DATA_DIR``, else the cache).
      offline: never download a missing dataset; fail saying which file to put where.
      quiet: no progress bars.
    """

    workdir: pathlib.Path = pathlib.Path(".")
    data_dir: str | None = None
    offline: bool = False
    quiet: bool = False

    @property
    def runs(self) -> pathlib.Path:
        return self.workdir / "runs"

    @property
    def figures(self) -> pathlib.Path:
        return self.workdir / "figures"

    def results(self, experiment: str, preset: str) -> pathlib.Path:
        return self.workdir / "results" / experiment / preset


class TrainBar:
    """A tqdm bar fed by :func:`diffjax.train.train`'s progress records."""

    def __init__(self, desc: str, disable: bool = False):
        self.bar = tqdm(desc=desc, unit="step", disable=disable, leave=False)
        self.step = 0

    def __call__(self, record: dict) -> None:
        if record["kind"] == "start":
            self.bar.reset(total=record["total_steps"])
            self.bar.update(record["step"])
            self.step = record["step"]
        elif record["kind"] == "train":
            self.bar.update(record["step"] - self.step)
            self.step = record["step"]
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
        elif record["kind"] == "eval":
            self.bar.write(f"  epoch {record['epoch']:.2f}: test accuracy "
                           f"{record['test_accuracy']:.4f}")  # fmt: skip
        elif record["kind"] == "done":
            self.bar.close()


def run_attack(model_fn, data: Dataset, attack_fn, config, *, key, batch_size: int = 100,
               desc: str = "attack", quiet: bool = False) -> dict:  # fmt: skip
    """One attack over ``data``; every adversarial example is re-checked (``attack_dataset``).

    Returns ``{"summary", "clean_correct", "adv_correct", "l2", "linf"}``: the summary dict and
    per-example lists (0/1 correctness before and after, re-measured perturbation norms).
    """
    batch_size = min(batch_size, -(-len(data) // jax.device_count()) * jax.device_count())
    with tqdm(total=-(-len(data) // batch_size), desc=desc, disable=quiet, leave=False) as bar:
        recs = attacks.attack_dataset(
            attack_fn, model_fn, data.images, data.labels, key, config, batch_size=batch_size,
            on_batch=lambda done, total: bar.update(1),
        )  # fmt: skip
    return {
        "summary": attacks.summarize_records(recs).as_dict(),
        "clean_correct": (recs["clean_pred"] == recs["label"]).astype(int).tolist(),
        "adv_correct": (recs["adv_pred"] == recs["label"]).astype(int).tolist(),
        "l2": recs["l2"].astype(float).tolist(),
        "linf": recs["linf"].astype(float).tolist(),
    }


def pgd_asr(model, data: Dataset, eps_list, *, steps: int, key, batch_size: int = 100,
            loss="ce", norm: str = "linf", restarts: int = 1, desc: str = "PGD",
            quiet: bool = False) -> list[dict]:  # fmt: skip
    """PGD (``loss``, ``restarts`` random starts, the step of :class:`attacks.PGDConfig` for
    ``norm``: 2.5·ε/steps in ℓ∞) at each ε (ℓ∞ on the [0, 1] pixel scale, or ℓ2): re-checked
    summaries.

    ``model`` is a ViT or any function of images [B, H, W, C] in [0, 1] → logits [B, K].
    Returns one ``{"eps", "summary", "clean_correct", "adv_correct", …}`` per ε
    (:func:`run_attack`).
    """
    model_fn = attacks.model_function(model)
    unit = "/255" if norm == "linf" else ""
    scale = 255 if norm == "linf" else 1
    out = []
    for eps in eps_list:
        config = attacks.PGDConfig(
            eps=float(eps), norm=norm, steps=steps, loss=loss, restarts=restarts
        )
        desc_eps = f"{desc} ε={eps * scale:g}{unit}"
        result = run_attack(
            model_fn, data, attacks.pgd, config, key=key, batch_size=batch_size, desc=desc_eps,
            quiet=quiet,
        )  # fmt: skip
        out.append({"eps": float(eps), **result})
    return out


def write_results(out_dir, config: ml_collections.ConfigDict, body: dict,
                  rows: list[dict]) -> dict:  # fmt: skip
    """results.json (resolved config, environment, ``body``) and summary.csv (``rows``)."""
    out_dir = pathlib.Path(out_dir)
    result = {"experiment": config.experiment, "preset": config.preset,
              "config": configs.to_dict(config), "environment": records.environment(),
              **body}  # fmt: skip
    write_json_atomic(out_dir / "results.json", result)
    records.write_csv_atomic(out_dir / "summary.csv", rows)
    return result


def seed_parts(out_dir, name: str, seeds, compute) -> list:
    """``compute(seed)`` for every seed, each cached as ``out_dir/parts/<name>_s<seed>.json``."""
    parts = pathlib.Path(out_dir) / "parts"
    return [records.cached(parts / f"{name}_s{seed}.json", lambda s=seed: compute(s))
            for seed in seeds]  # fmt: skip


def nan_to_none(d: dict) -> dict:
    """``d`` with NaN values as ``None`` (JSON has no NaN; e.g. the std of one seed)."""
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in d.items()}


def fmt(x, spec=".3f") -> str:
    """A number for a table; ``None``/NaN print as n/a."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return format(x, spec)
