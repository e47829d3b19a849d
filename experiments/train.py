"""Train ViT or DiffViT on an image-classification dataset; resume an interrupted run.

    diffjax train --config=train:cpu --config.train.model.attention=diff --workdir runs/diffvit
    diffjax train --config=train:mini --workdir /tmp/mini
    diffjax train --config=train:paper --config.train.dataset=tfds:imagenet2012 \
        --config.image_size=224 --config.train_split='train[:10%]' --config.test_split=validation

The run directory (``--workdir``) receives config.json, metrics.jsonl, checkpoints/ and
results.json. Running the same command again resumes from the latest checkpoint;
``diffjax.checkpoint.load_model(WORKDIR)`` loads the best model.
"""

from __future__ import annotations

import tqdm

from diffjax.data import DatasetFormatError, DatasetUnavailableError, load_dataset
from diffjax.experiments.common import Context
from diffjax.experiments.configs import recipes
from diffjax.experiments.zoo import DataError
from diffjax.train import fit_to_data, train


class ProgressBar:
    """tqdm bar over training steps: loss, accuracy, img/s in the postfix; ETA from tqdm."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def __call__(self, record: dict) -> None:
        kind = record["kind"]
        if kind == "start":
            self.bar = tqdm.tqdm(
                total=record["total_steps"],
                initial=record["step"],
                unit="step",
                disable=self.quiet,
                dynamic_ncols=True,
            )
        elif kind == "train":
            self.bar.update(record["step"] - self.bar.n)
            postfix = {
                "loss": f"{record['loss']:.3f}",
                "acc": f"{record['accuracy']:.3f}",
                "lr": f"{record['learning_rate']:.2e}",
            }
            if record["img_per_s"]:
                postfix["img/s"] = f"{record['img_per_s']:.0f}"
            self.bar.set_postfix(postfix)
        elif kind == "eval":
            self.bar.write(
                f"epoch {record['epoch']:.2f}: test accuracy "
                f"{record['test_accuracy']:.4f}, test loss {record['test_loss']:.4f} "
                f"({record['test_count']} images)"
            )
        elif kind == "done":
            self.bar.close()


def run(config, ctx: Context) -> dict:
    """Train ``config.train`` into ``ctx.workdir``; the training summary."""
    train_config = recipes.train_config(config.train)
    options = {"download": not ctx.offline}
    if config.image_size:
        if not train_config.dataset.startswith("tfds:"):
            raise ValueError("image_size applies to tfds: datasets only")
        options["image_size"] = config.image_size
    try:
        train_data = load_dataset(train_config.dataset, config.train_split, ctx.data_dir,
                                  **options)  # fmt: skip
        test_data = load_dataset(train_config.dataset, config.test_split, ctx.data_dir, **options)
    except (DatasetUnavailableError, DatasetFormatError) as e:
        raise DataError(f"dataset {train_config.dataset} is not available here:\n{e}") from e
    train_config = fit_to_data(train_config, train_data)
    m = train_config.model
    print(f"run directory: {ctx.workdir}")
    print(f"training {'DiffViT' if m.attention == 'diff' else 'ViT'} (width {m.width}, depth "
          f"{m.depth}, {m.num_heads} heads, patch {m.patch_size}) on {train_config.dataset}: "
          f"{len(train_data)} train / {len(test_data)} test images")  # fmt: skip
    _, summary = train(train_config, ctx.workdir, train_data=train_data, test_data=test_data,
                       progress=ProgressBar(ctx.quiet))  # fmt: skip
    final = summary["final"]
    print(
        f"final test accuracy {final['test_accuracy']:.4f} (loss {final['test_loss']:.4f}); "
        f"best {summary['best_test_accuracy']:.4f} at step {summary['best_step']}; "
        f"results in {ctx.workdir / 'results.json'}"
    )
    return summary
