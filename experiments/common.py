"""Pieces the experiment scripts share: progress bars, a trained-model zoo, ASR over budgets."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from tqdm.auto import tqdm

from diffjax import attacks
from diffjax.data import Dataset
from diffjax.train import TrainConfig, train


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
        elif record["kind"] == "done":
            self.bar.close()


def trained_model(config: TrainConfig, run_dir, train_data: Dataset, test_data: Dataset,
                  desc: str, quiet: bool = False):  # fmt: skip
    """Train ``config`` into ``run_dir`` (or resume / reuse a finished run); (model, summary)."""
    bar = TrainBar(desc, disable=quiet)
    return train(config, pathlib.Path(run_dir), train_data=train_data, test_data=test_data,
                 progress=bar)  # fmt: skip


def pgd_asr(model, data: Dataset, eps_list, *, steps: int, key, batch_size: int = 100,
            loss="ce", desc: str = "PGD", quiet: bool = False) -> list[dict]:  # fmt: skip
    """PGD-ℓ∞ (``loss``, one random start, step 2.5·ε/steps) at each ε: re-checked summaries.

    Returns one ``{"eps", "summary", "clean_correct", "adv_correct"}`` per ε (per-example 0/1
    lists), with every adversarial example re-checked (:func:`attacks.attack_dataset`).
    """
    model_fn = attacks.model_function(model)
    batch_size = min(batch_size, -(-len(data) // jax.device_count()) * jax.device_count())
    out = []
    for eps in eps_list:
        config = attacks.PGDConfig(eps=eps, steps=steps, loss=loss)
        with tqdm(total=-(-len(data) // batch_size), desc=f"{desc} ε={eps * 255:g}/255",
                  disable=quiet, leave=False) as bar:  # fmt: skip
            recs = attacks.attack_dataset(
                attacks.pgd, model_fn, data.images, data.labels, key, config,
                batch_size=batch_size, on_batch=lambda done, total, bar=bar: bar.update(1),
            )  # fmt: skip
        out.append({
            "eps": eps,
            "summary": attacks.summarize_records(recs).as_dict(),
            "clean_correct": (recs["clean_pred"] == recs["label"]).astype(int).tolist(),
            "adv_correct": (recs["adv_pred"] == recs["label"]).astype(int).tolist(),
        })  # fmt: skip
    return out


def fmt(x, spec=".3f") -> str:
    """A number for a table; ``None``/NaN print as n/a."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return format(x, spec)
