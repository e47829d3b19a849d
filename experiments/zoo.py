"""The trained models the paper experiments share, named by their resolved training config.

    zoo = Zoo(recipes.train_config(config.train), ctx)
    train, test = zoo.data()                                   # the recipe's data, cut to size
    model, summary = zoo.model(train, test, "diff", seed=0, depth=4)

A zoo model is the recipe with (dataset, attention, depth, λ_init, seed) set and the model
fitted to the data. Its run directory is

    WORKDIR/runs/zoo/<dataset>/<vit|diffvit>_d<depth>[_li<λ_init>]_s<seed>-<hash>/

where ``hash`` is the first 12 hex digits of the SHA-256 of the resolved config: two
experiments asking for the same model share one run (trained once; an interrupted training
resumes), and a changed recipe field is a different model. Every evaluation writes a checkpoint
and all are kept: the λ-during-training experiment reads them.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from diffjax.data import Dataset, DatasetFormatError, DatasetUnavailableError, load_dataset
from diffjax.experiments.common import Context, TrainBar
from diffjax.train import TrainConfig, fit_to_data, train
from diffjax.vit import relayout

NAMES = {"softmax": "vit", "diff": "diffvit"}
SYNTHETIC_IMAGES = 256  # per split of the mini data


class DataError(RuntimeError):
    """A dataset that is missing or corrupt; the message says what to put where."""


def config_hash(config: TrainConfig) -> str:
    """12 hex digits of the SHA-256 of the config's canonical JSON."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Zoo:
    """Trains, resumes or loads the models of one training recipe under ``ctx.runs``."""

    def __init__(self, recipe: TrainConfig, ctx: Context):
        self.recipe = recipe
        self.ctx = ctx

    def data(self, dataset: str | None = None) -> tuple[Dataset, Dataset]:
        """(train, test) of ``dataset`` (default: the recipe's), cut to the recipe's sizes.

        Raises:
          DataError: the dataset is missing or corrupt (the message says what to put where).
        """
        name = dataset or self.recipe.dataset
        kwargs = {"n": SYNTHETIC_IMAGES} if name == "synthetic" else {}
        try:
            splits = [load_dataset(name, split, self.ctx.data_dir,
                                   download=not self.ctx.offline, **kwargs)
                      for split in ("train", "test")]  # fmt: skip
        except (DatasetUnavailableError, DatasetFormatError) as e:
            raise DataError(f"dataset {name} is not available here:\n{e}") from e
        train_data, test_data = splits
        if self.recipe.train_examples is not None:
            train_data = train_data.take(self.recipe.train_examples)
        if self.recipe.test_examples is not None:
            test_data = test_data.take(self.recipe.test_examples)
        return train_data, test_data

    def config(self, data: Dataset, attention: str, *, seed: int, depth: int | None = None,
               lambda_init: float | None = None, dataset: str | None = None
               ) -> TrainConfig:  # fmt: skip
        """The training config of one zoo model, fitted to ``data``'s images and classes."""
        model = self.recipe.model.replace(attention=attention,
                                          depth=depth or self.recipe.model.depth)  # fmt: skip
        if lambda_init is not None:
            if attention != "diff":
                raise ValueError("lambda_init applies to DiffViT (attention='diff') only")
            model = model.replace(lambda_init=float(lambda_init))
        r = self.recipe
        config = r.replace(model=model, dataset=dataset or r.dataset, seed=seed,
                           keep_checkpoints=r.epochs // r.eval_every_epochs + 2)  # fmt: skip
        return fit_to_data(config, data)

    def run_dir(self, config: TrainConfig) -> pathlib.Path:
        m = config.model
        li = "" if m.lambda_init == self.recipe.model.lambda_init else f"_li{m.lambda_init}"
        name = f"{NAMES[m.attention]}_d{m.depth}{li}_s{config.seed}-{config_hash(config)}"
        return self.ctx.runs / "zoo" / config.dataset.replace(":", "_") / name

    def model(self, train_data: Dataset, test_data: Dataset, attention: str, *, seed: int,
              depth: int | None = None, lambda_init: float | None = None,
              dataset: str | None = None):  # fmt: skip
        """Train the model (or resume it, or load it when finished).

        Returns:
          (model, train summary, run directory): the model in the per-layer loop layout the
          analyses index, whatever ``scan_layers`` it trained with; the summary's ``run`` names
          the run directory relative to the runs root (results name the model, not this
          machine's folders).
        """
        config = self.config(train_data, attention, seed=seed, depth=depth,
                             lambda_init=lambda_init, dataset=dataset)  # fmt: skip
        run_dir = self.run_dir(config)
        li = "" if lambda_init is None else f" λ_init={lambda_init:g}"
        bar = TrainBar(f"train {NAMES[attention]} D={config.model.depth}{li} seed {seed}",
                       self.ctx.quiet)  # fmt: skip
        model, summary = train(config, run_dir, train_data=train_data, test_data=test_data,
                               progress=bar)  # fmt: skip
        model = relayout(model, scan_layers=False)
        return model, {**summary, "run": str(run_dir.relative_to(self.ctx.runs))}, run_dir
