"""Attack a saved model on a dataset split and write per-example results and a summary.

    python -m experiments.attack --checkpoint runs/vit --attack pgd --norm linf --eps 1/255 \\
        --steps 20 --dataset cifar10 --split test --num-examples 1000 --output pgd.json

The results JSON holds the settings, one record per example (label, clean and adversarial
prediction, success, ℓ∞ and ℓ2 norms, model calls) and the summary of
:func:`diffjax.attacks.summarize`. It is rewritten atomically after every batch; an interrupted
run continues with ``--resume`` and gives the same records as an uninterrupted one, because every
example's randomness comes from (seed, dataset index) only.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import json
import pathlib

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from diffjax import attacks
from diffjax.checkpoint import load_model, write_json_atomic
from diffjax.data import load_dataset

FORMAT = "diffjax.attack/1"
ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw", "square", "fab-t", "autoattack")


def parse_eps(text: str) -> float:
    """A radius written as a number or a fraction, e.g. ``0.5`` or ``4/255``."""
    try:
        value = float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as e:
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from e
    if value < 0:
        raise argparse.ArgumentTypeError(f"eps must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.attack",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("model, data and output")
    io.add_argument("--checkpoint", required=True, help="model directory written by save_model")
    io.add_argument("--dataset", default="synthetic", help="name for diffjax.data.load_dataset")
    io.add_argument("--split", default="test", help="dataset split")
    io.add_argument("--data-dir", default=None, help="where the dataset lives, if on disk")
    io.add_argument("--num-examples", type=int, default=None, help="first N examples (all)")
    io.add_argument("--batch-size", type=int, default=100, help="multiple of the device count")
    io.add_argument("--output", required=True, help="results JSON path")
    io.add_argument("--resume", action="store_true", help="continue a partial results file")
    io.add_argument("--overwrite", action="store_true", help="replace an existing results file")

    at = parser.add_argument_group("attack")
    at.add_argument("--attack", required=True, choices=ATTACKS)
    at.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model")
    at.add_argument("--eps", type=parse_eps, default=None, help="radius, e.g. 4/255 (not cw)")
    at.add_argument("--seed", type=int, default=0, help="PRNG seed")
    at.add_argument("--steps", type=int, default=None, help="PGD 20, APGD/FAB/AutoAttack 100")
    at.add_argument("--step-size", type=parse_eps, default=None, help="PGD α (2.5·eps/steps)")
    at.add_argument("--restarts", type=int, default=1, help="PGD/APGD/FAB restarts")
    at.add_argument("--loss", default="ce", choices=("ce", "margin"), help="PGD loss")
    at.add_argument(
        "--targeted", action="store_true", help="PGD/CW: a random target ≠ label per example"
    )
    at.add_argument("--num-targets", type=int, default=9, help="APGD-T/FAB-T/AutoAttack targets")
    at.add_argument("--queries", type=int, default=5000, help="Square queries")
    at.add_argument("--confidence", type=float, default=0.0, help="CW κ")
    at.add_argument("--binary-search-steps", type=int, default=9, help="CW")
    at.add_argument("--max-iterations", type=int, default=10000, help="CW Adam steps per c")
    at.add_argument("--learning-rate", type=float, default=1e-2, help="CW Adam step")
    at.add_argument("--initial-const", type=float, default=1e-3, help="CW first c")
    at.add_argument("--no-abort-early", action="store_true", help="CW: run every iteration")
    return parser


def build_attack(args) -> tuple:
    """(attack function, its config) from the parsed flags."""
    if args.attack == "cw":
        config = attacks.CWConfig(
            confidence=args.confidence,
            binary_search_steps=args.binary_search_steps,
            max_iterations=args.max_iterations,
            learning_rate=args.learning_rate,
            initial_const=args.initial_const,
            abort_early=not args.no_abort_early,
            targeted=args.targeted,
        )
        return attacks.cw_l2, config
    if args.eps is None:
        raise ValueError(f"--eps is required for {args.attack}")
    if args.targeted and args.attack != "pgd":
        raise ValueError("--targeted applies to pgd and cw only")
    eps, norm = args.eps, args.norm
    if args.attack == "pgd":
        config = attacks.PGDConfig(
            eps,
            norm,
            steps=args.steps if args.steps is not None else 20,
            step_size=args.step_size,
            restarts=args.restarts,
            loss=args.loss,
            targeted=args.targeted,
        )
        return attacks.pgd, config
    steps = args.steps if args.steps is not None else 100
    if args.attack.startswith("apgd"):
        loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[args.attack]
        config = attacks.APGDConfig(
            eps, norm, steps, args.restarts, loss=loss, num_targets=args.num_targets
        )
        return attacks.apgd, config
    if args.attack == "square":
        if norm != "linf":
            raise ValueError("square is implemented for --norm linf only")
        return attacks.square, attacks.SquareConfig(eps, args.queries)
    if args.attack == "fab-t":
        config = attacks.FABConfig(eps, norm, steps, args.restarts, num_targets=args.num_targets)
        return attacks.fab_targeted, config
    config = attacks.AutoAttackConfig(
        eps, norm, steps=steps, num_targets=args.num_targets, square_queries=args.queries
    )
    return attacks.autoattack, config


def random_targets(seed: int, indices: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """A uniformly random class ≠ label per example, fixed by (seed, dataset index)."""
    offsets = [np.random.default_rng([seed, int(i)]).integers(1, k) for i in indices]
    return ((labels + np.asarray(offsets)) % k).astype(np.int32)


def config_record(config) -> dict:
    return {"type": type(config).__name__, **dataclasses.asdict(config)}


def load_previous(path: pathlib.Path, settings: dict, resume: bool, overwrite: bool) -> dict:
    """The records of an earlier run to continue, or an empty start."""
    if not path.exists() or overwrite:
        return {"records": [], "batches_done": 0}
    if not resume:
        raise SystemExit(f"{path} exists: pass --resume to continue it or --overwrite")
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"cannot resume: {path} is not valid JSON ({e})") from e
    if previous.get("format") != FORMAT or previous.get("settings") != settings:
        raise SystemExit(f"cannot resume: {path} was written with other settings")
    return previous


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        attack_fn, config = build_attack(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    devices = jax.devices()
    if args.batch_size <= 0 or args.batch_size % len(devices):
        raise SystemExit(f"--batch-size must be a positive multiple of the {len(devices)} devices")

    data = load_dataset(args.dataset, args.split, args.data_dir)
    if args.num_examples is not None:
        if args.num_examples <= 0:
            raise SystemExit("--num-examples must be positive")
        data = data.take(args.num_examples)
    settings = {
        "checkpoint": str(pathlib.Path(args.checkpoint).resolve()),
        "dataset": args.dataset,
        "split": args.split,
        "data_dir": args.data_dir,
        "num_examples": len(data),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "targeted": args.targeted,
        "attack": args.attack,
        "config": config_record(config),
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from the file (lists, …)
    output = pathlib.Path(args.output)
    state = load_previous(output, settings, args.resume, args.overwrite)
    records, done = state["records"], state["batches_done"]

    model = load_model(args.checkpoint)
    mc = model.config
    if data.images.shape[1:] != (mc.image_size, mc.image_size, mc.channels):
        raise SystemExit(
            f"dataset images {data.images.shape[1:]} do not fit the model "
            f"({mc.image_size}x{mc.image_size}x{mc.channels})"
        )
    if data.num_classes != mc.num_classes:
        raise SystemExit(f"dataset has {data.num_classes} classes, model {mc.num_classes}")

    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,))
    batch_sharding = NamedSharding(mesh, P("data"))
    model_fn = jax.device_put(attacks.model_function(model), NamedSharding(mesh, P()))
    key = jax.random.key(args.seed)
    n, bs = len(data), args.batch_size
    num_batches = -(-n // bs)

    def write(status: str) -> dict:
        result = {
            "format": FORMAT,
            "status": status,
            "settings": settings,
            "model_config": dataclasses.asdict(mc),
            "devices": [str(d) for d in devices],
            "jax_version": jax.__version__,
            "batches_done": done,
            "records": records,
        }
        if records:
            r = {k: np.asarray([rec[k] for rec in records]) for k in records[0]}
            targets = r["target"] if args.targeted else None
            result["summary"] = attacks.summarize(
                r["label"],
                r["clean_pred"],
                r["adv_pred"],
                r["linf"],
                r["l2"],
                r["model_calls"],
                targets,
            ).as_dict()
        write_json_atomic(output, result)
        return result

    progress = tqdm(total=num_batches, initial=done, desc=args.attack, unit="batch")
    for b in range(done, num_batches):
        index = np.arange(b * bs, min((b + 1) * bs, n))
        padded = np.concatenate([index, np.full(bs - len(index), index[-1])])  # one compile
        images = data.images[padded].astype(np.float32) / 255.0
        labels = data.labels[padded].astype(np.int32)
        kwargs = {"ids": jax.device_put(padded.astype(np.int32), batch_sharding)}
        targets = None
        if args.targeted:
            targets = random_targets(args.seed, padded, labels, mc.num_classes)
            kwargs["targets"] = jax.device_put(targets, batch_sharding)
        result = attack_fn(
            model_fn,
            jax.device_put(images, batch_sharding),
            jax.device_put(labels, batch_sharding),
            key,
            config,
            **kwargs,
        )
        result = jax.device_get(result)
        # Norms, box and predictions re-measured outside the attack code.
        checked = attacks.recheck(
            model_fn,
            images,
            result.adv_images,
            labels,
            result.success,
            getattr(config, "eps", None),
            getattr(config, "norm", None),
            targets,
        )
        clean_pred = np.argmax(result.clean_logits, axis=1)
        adv_pred = checked["adv_pred"]
        for j, i in enumerate(index):
            rec = {
                "index": int(i),
                "label": int(labels[j]),
                "clean_pred": int(clean_pred[j]),
                "adv_pred": int(adv_pred[j]),
                "success": bool(result.success[j]),
                "linf": float(checked["linf"][j]),
                "l2": float(checked["l2"][j]),
                "model_calls": int(result.model_calls[j]),
            }
            if targets is not None:
                rec["target"] = int(targets[j])
            rec.update({k: np.asarray(v[j]).item() for k, v in result.extras.items()})
            records.append(rec)
        done = b + 1
        out = write("partial")
        progress.set_postfix(asr=f"{out['summary']['asr'] or 0:.3f}")
        progress.update()
    progress.close()
    out = write("complete")
    s = out.get("summary", {})
    print(
        f"{s.get('examples')} examples: clean accuracy {s.get('clean_accuracy')}, "
        f"robust accuracy {s.get('robust_accuracy')}, ASR {s.get('asr')}, "
        f"mean linf {s.get('mean_linf')}, mean l2 {s.get('mean_l2')} -> {output}"
    )
    return out


if __name__ == "__main__":
    main()
