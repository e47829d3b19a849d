"""Train ViT or DiffViT on an image-classification dataset; resume an interrupted run.

Examples:

    python -m experiments.train --model diffvit --dataset cifar10 --preset cpu
    python -m experiments.train --model vit --preset smoke --workdir /tmp/smoke
    python -m experiments.train --model vit --dataset cifar10 --preset cpu --data-dir ~/cifar
    python -m experiments.train --dataset tfds:imagenet2012 --image-size 224 \\
        --train-split 'train[:10%]' --test-split validation --preset paper

The run directory (``--workdir``) receives config.json, metrics.jsonl, checkpoints/ and
results.json. Running the same command again resumes from the latest checkpoint;
``diffjax.checkpoint.load_model(WORKDIR)`` loads the best model.
"""

from __future__ import annotations

import argparse
import pathlib

import tqdm

from diffjax import sharding
from diffjax.data import DatasetUnavailableError, load_dataset
from diffjax.train import TRAIN_PRESETS, fit_to_data, train, train_preset

MODELS = {"vit": "softmax", "diffvit": "diff"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="vit",
        help="vit (softmax attention) or diffvit (Differential Attention, "
        "parameter-matched: half the heads)",
    )
    p.add_argument(
        "--preset",
        choices=TRAIN_PRESETS,
        default="cpu",
        help="smoke: seconds, for tests; cpu: about 30 min on a 2-core CPU on "
        "CIFAR-10; paper: the GPU-scale recipe (default: %(default)s)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="cifar10, cifar100, tiny_imagenet, embedded, synthetic or tfds:NAME "
        "(default: the preset's)",
    )
    p.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=None,
        help="run directory (default: runs/DATASET_MODEL_PRESET)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset archives or extracted folders (default: "
        "$DIFFJAX_DATA_DIR, else ~/.cache/diffjax)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="tfds: datasets only: resize (shorter side) and centre-crop every image "
        "to this size; needed when their sizes differ",
    )
    p.add_argument(
        "--train-split",
        default="train",
        help="training split (tfds: any split string, e.g. 'train[:10%%]')",
    )
    p.add_argument(
        "--test-split", default="test", help="evaluation split (tfds:imagenet2012 has 'validation')"
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never download; fail with a message saying which file to put where",
    )
    g = p.add_argument_group("training (override the preset)")
    g.add_argument("--epochs", type=int, help="passes over the training set")
    g.add_argument(
        "--batch-size",
        type=int,
        help="global batch size (all devices; a multiple of the device count)",
    )
    g.add_argument("--lr", type=float, dest="learning_rate", help="peak learning rate")
    g.add_argument(
        "--end-lr",
        type=float,
        dest="end_learning_rate",
        help="learning rate at the last step (cosine decay)",
    )
    g.add_argument("--warmup-epochs", type=float, help="linear warmup length, in epochs")
    g.add_argument(
        "--weight-decay", type=float, help="AdamW decoupled weight decay (weight matrices only)"
    )
    g.add_argument("--label-smoothing", type=float, help="label smoothing in [0, 1)")
    g.add_argument("--grad-clip", type=float, help="global-norm clip; 0 disables")
    g.add_argument("--crop-padding", type=int, help="random-crop padding in pixels; 0 disables")
    g.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    g.add_argument(
        "--seed", type=int, help="initialisation, data order, augmentation and dropout seed"
    )
    g.add_argument("--train-examples", type=int, help="use only the first N training examples")
    g.add_argument("--test-examples", type=int, help="evaluate on the first N test examples")
    g.add_argument(
        "--eval-batch-size", type=int, help="evaluation batch size (a multiple of the device count)"
    )
    g.add_argument(
        "--eval-every",
        type=int,
        dest="eval_every_epochs",
        help="evaluate and save a checkpoint every N epochs (and at the end)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        dest="checkpoint_every_steps",
        help="also save a checkpoint every N steps (0: only at evaluations)",
    )
    g.add_argument(
        "--keep",
        type=int,
        dest="keep_checkpoints",
        help="latest checkpoints kept (the best is kept as well)",
    )
    g.add_argument(
        "--log-every",
        type=int,
        dest="log_every_steps",
        help="record training metrics every N steps",
    )
    m = p.add_argument_group("model (override the preset)")
    m.add_argument("--width", type=int, help="token width D")
    m.add_argument("--depth", type=int, help="number of transformer blocks")
    m.add_argument("--heads", type=int, dest="num_heads", help="softmax heads H_base")
    m.add_argument(
        "--patch-size",
        type=int,
        help="patch side for 32 px images; scaled with the image size so that "
        "the token grid stays the same",
    )
    m.add_argument("--mlp-ratio", type=float, help="MLP hidden width / D")
    m.add_argument("--dropout", type=float, help="dropout after attention and MLP")
    m.add_argument(
        "--lambda-init",
        default=None,
        help="DiffViT λ_init: a float, or 'schedule' for 0.8 − 0.6·exp(−0.3·l)",
    )
    m.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 matmuls (for accelerators; parameters stay float32)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host runs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    train_fields = (
        "epochs",
        "batch_size",
        "learning_rate",
        "end_learning_rate",
        "warmup_epochs",
        "weight_decay",
        "label_smoothing",
        "crop_padding",
        "seed",
        "train_examples",
        "test_examples",
        "eval_batch_size",
        "eval_every_epochs",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
    )
    changes = {k: getattr(args, k) for k in train_fields if getattr(args, k) is not None}
    if args.dataset is not None:
        changes["dataset"] = args.dataset
    if args.grad_clip is not None:
        changes["grad_clip"] = args.grad_clip or None
    if args.no_flip:
        changes["flip"] = False
    config = train_preset(args.preset, attention=MODELS[args.model], **changes)
    model_fields = ("width", "depth", "num_heads", "patch_size", "mlp_ratio", "dropout")
    model_changes = {k: getattr(args, k) for k in model_fields if getattr(args, k) is not None}
    if args.lambda_init is not None:
        li = args.lambda_init
        model_changes["lambda_init"] = li if li == "schedule" else float(li)
    if args.bf16:
        model_changes["dtype"] = "bfloat16"
    return config.replace(model=config.model.replace(**model_changes))


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


def main(argv=None) -> None:
    args = parse_args(argv)
    sharding.initialize_distributed(args.distributed)
    config = build_config(args)
    options = {"download": not args.no_download}
    if args.image_size is not None:
        if not config.dataset.startswith("tfds:"):
            raise SystemExit("--image-size applies to tfds: datasets only")
        options["image_size"] = args.image_size
    try:
        train_data = load_dataset(config.dataset, args.train_split, args.data_dir, **options)
        test_data = load_dataset(config.dataset, args.test_split, args.data_dir, **options)
    except (DatasetUnavailableError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    config = fit_to_data(config, train_data)
    workdir = args.workdir or pathlib.Path("runs") / (
        f"{config.dataset.replace(':', '_')}_{args.model}_{args.preset}"
    )
    print(f"run directory: {workdir}")
    print(
        f"training {args.model} on {config.dataset}: {len(train_data)} train / "
        f"{len(test_data)} test images; {config}"
    )
    _, summary = train(
        config,
        workdir,
        train_data=train_data,
        test_data=test_data,
        progress=ProgressBar(args.quiet),
    )
    final = summary["final"]
    print(
        f"final test accuracy {final['test_accuracy']:.4f} (loss {final['test_loss']:.4f}); "
        f"best {summary['best_test_accuracy']:.4f} at step {summary['best_step']}; "
        f"results in {workdir / 'results.json'}"
    )


if __name__ == "__main__":
    main()
