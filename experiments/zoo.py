"""The trained models the paper-result scripts share, one recipe per preset.

    spec = zoo.Zoo.of("cpu")
    train, test = spec.data("cifar10", data_dir)
    model, summary = spec.model("cifar10", train, test, "diff", seed=0, depth=4, runs="runs")

A model is identified by (preset, dataset, attention, depth, λ_init, seed); everything else is
the preset's recipe. Its run directory is

    runs/zoo/<preset>/<dataset>/<vit|diffvit>_d<depth>[_li<λ_init>]_s<seed>/

so the ASR table, alignment, Lipschitz, depth and λ-during-training scripts train each model once
and reuse it (an interrupted training resumes from its latest checkpoint). Every evaluation
(each epoch; every 5th for ``paper``) writes a checkpoint and all are kept: the
λ-during-training script reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from diffjax.config import ViTConfig
from diffjax.data import Dataset, DatasetFormatError, DatasetUnavailableError, load_dataset
from diffjax.train import TrainConfig, fit_to_data, train, train_preset
from experiments.common import TrainBar, experiment_parser

NAMES = {"softmax": "vit", "diff": "diffvit"}


@dataclasses.dataclass(frozen=True)
class Zoo:
    """How a preset's models are trained and which data they see.

    Attributes:
      preset: ``smoke``, ``cpu`` or ``paper``.
      recipe: the training recipe; ``recipe.model`` is the architecture at ``recipe.model.depth``
        (the default depth), its attention and λ_init are set per model.
      train_examples: train on the first n training images (``None``: all).
      test_examples: the test images every script evaluates and attacks a prefix of (the offline
        CIFAR-10 copy is exact for test images 0..999).
    """

    preset: str
    recipe: TrainConfig
    train_examples: int | None
    test_examples: int

    @staticmethod
    def of(preset: str) -> Zoo:
        if preset not in ZOOS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(ZOOS)}")
        return ZOOS[preset]

    def data(self, dataset: str, data_dir: str | None, download: bool = True
             ) -> tuple[Dataset, Dataset]:  # fmt: skip
        """(train, test) splits, cut to the preset's sizes (``synthetic`` for smoke runs).

        A missing or corrupt dataset exits with a message that says what to put where.
        """
        try:
            return self._data(dataset, data_dir, download)
        except (DatasetUnavailableError, DatasetFormatError) as e:
            sys.exit(f"dataset {dataset} is not available here:\n{e}")

    def _data(self, dataset: str, data_dir: str | None, download: bool) -> tuple[Dataset, Dataset]:
        kwargs = {"n": 256} if dataset == "synthetic" else {}
        train_data = load_dataset(dataset, "train", data_dir, download=download, **kwargs)
        test_data = load_dataset(dataset, "test", data_dir, download=download, **kwargs)
        if self.train_examples is not None:
            train_data = train_data.take(self.train_examples)
        return train_data, test_data.take(self.test_examples)

    def config(
        self,
        dataset: str,
        data: Dataset,
        attention: str,
        *,
        seed: int,
        depth: int | None = None,
        lambda_init: float | None = None,
    ) -> TrainConfig:
        """The training config of one zoo model, fitted to ``data``'s images and classes."""
        model: ViTConfig = self.recipe.model.replace(
            attention=attention, depth=depth or self.recipe.model.depth
        )
        if lambda_init is not None:
            if attention != "diff":
                raise ValueError("lambda_init applies to DiffViT (attention='diff') only")
            model = model.replace(lambda_init=float(lambda_init))
        config = self.recipe.replace(
            model=model,
            dataset=dataset,
            seed=seed,
            keep_checkpoints=self.recipe.epochs // self.recipe.eval_every_epochs + 2,
        )
        return fit_to_data(config, data)

    def run_dir(
        self,
        runs,
        dataset: str,
        attention: str,
        *,
        seed: int,
        depth: int | None = None,
        lambda_init: float | None = None,
    ) -> pathlib.Path:
        depth = depth or self.recipe.model.depth
        # The recipe's own λ_init names no variant: one model, whichever script asks first.
        default = lambda_init is None or lambda_init == self.recipe.model.lambda_init
        li = "" if default else f"_li{lambda_init:g}"
        name = f"{NAMES[attention]}_d{depth}{li}_s{seed}"
        return pathlib.Path(runs) / "zoo" / self.preset / dataset.replace(":", "_") / name

    def model(
        self,
        dataset: str,
        train_data: Dataset,
        test_data: Dataset,
        attention: str,
        *,
        seed: int,
        depth: int | None = None,
        lambda_init: float | None = None,
        runs="runs",
        quiet: bool = False,
    ):
        """Train the model (or resume it, or load it when finished).

        Returns:
          (model, train summary); the summary's ``run`` is the run directory relative to ``runs``.
        """
        config = self.config(
            dataset, train_data, attention, seed=seed, depth=depth, lambda_init=lambda_init
        )
        run_dir = self.run_dir(
            runs, dataset, attention, seed=seed, depth=depth, lambda_init=lambda_init
        )
        li = "" if lambda_init is None else f" λ_init={lambda_init:g}"
        bar = TrainBar(f"train {NAMES[attention]} D={config.model.depth}{li} seed {seed}", quiet)
        model, summary = train(
            config, run_dir, train_data=train_data, test_data=test_data, progress=bar
        )
        # Relative to the runs root: results name the model, not this machine's folders.
        return model, {**summary, "run": str(run_dir.relative_to(runs))}


def start(experiment: str, doc: str, presets: dict, argv=None, parser=None):
    """Parse the common flags and load the preset's data.

    Returns:
      (args, preset, zoo, results directory, train split, test split).
    """
    parser = parser or experiment_parser(f"python -m experiments.{experiment}", doc, presets)
    args: argparse.Namespace = parser.parse_args(argv)
    preset = presets[args.preset]
    zoo = Zoo.of(args.preset)
    out_dir = pathlib.Path(args.results) / experiment / args.preset
    train, test = zoo.data(preset.dataset, args.data_dir, not args.offline)
    return args, preset, zoo, out_dir, train, test


ZOOS = {
    # Seconds: 5 tokens of a 32 px synthetic image, width 16.
    "smoke": Zoo(
        preset="smoke",
        recipe=TrainConfig(
            model=ViTConfig(width=16, depth=2, num_heads=2, patch_size=16, mlp_ratio=2.0),
            epochs=2,
            batch_size=32,
            learning_rate=3e-3,
            warmup_epochs=0.5,
            eval_batch_size=64,
            log_every_steps=4,
        ),
        train_examples=128,
        test_examples=64,
    ),
    # Sized for the 2-core CPU (README, "Paper experiments"): 65 tokens, width 64.
    "cpu": Zoo(
        preset="cpu",
        recipe=TrainConfig(
            model=ViTConfig(width=64, depth=4, num_heads=4, patch_size=4, mlp_ratio=2.0),
            epochs=4,
            batch_size=128,
            learning_rate=2e-3,
            warmup_epochs=0.5,
            eval_batch_size=500,
            log_every_steps=20,
        ),
        train_examples=10000,
        test_examples=1000,
    ),
    # The GPU recipe: the project's `paper` training preset at the default depth 6, with a
    # checkpoint at every evaluation only (the zoo keeps them all).
    "paper": Zoo(
        preset="paper",
        recipe=train_preset("paper", checkpoint_every_steps=0),
        train_examples=None,
        test_examples=10000,
    ),
}
