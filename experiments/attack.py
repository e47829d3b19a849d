"""Attack a saved model on a dataset split and write per-example results and a summary.

    diffjax attack --config=attack:pgd --config.checkpoint=runs/vit --config.params.eps=0.0039 \\
        --config.params.steps=20 --config.num_examples=1000 --workdir results/vit_pgd

The results JSON holds the settings, one record per example (label, clean and adversarial
prediction, success, ℓ∞ and ℓ2 norms, model calls), the summary of
:func:`diffjax.attacks.summarize` and the sha256 of all that, so that ``--resume`` refuses an
edited file. It is rewritten atomically after every batch; an interrupted run continues with
``--resume`` and gives the same records as an uninterrupted one, because every example's
randomness comes from (seed, dataset index) only.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from diffjax import attacks
from diffjax.checkpoint import config_to_dict, load_model, write_json_atomic
from diffjax.data import load_dataset
from diffjax.experiments.common import Context
from diffjax.records import EventLog, read_json, seal, unseal

FORMAT = "diffjax.attack/1"
OUTPUT = "attack.json"


def build_attack(c) -> tuple:
    """(attack function, its config) from an attack ConfigDict (``configs/attack.py``)."""
    return attacks.build_attack(c.attack, **c.params.to_dict())


def random_targets(seed: int, indices: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """A uniformly random class ≠ label per example, fixed by (seed, dataset index)."""
    offsets = [np.random.default_rng([seed, int(i)]).integers(1, k) for i in indices]
    return ((labels + np.asarray(offsets)) % k).astype(np.int32)


def config_record(config) -> dict:
    return {"type": type(config).__name__, **dataclasses.asdict(config)}


def load_previous(path: pathlib.Path, settings: dict, resume: bool) -> dict:
    """The records of an earlier run to continue, or an empty start."""
    if not path.exists():
        return {"records": [], "batches_done": 0}
    if not resume:
        raise SystemExit(f"{path} exists: pass --resume to continue it or --overwrite")
    try:
        previous = unseal(read_json(path), path)
    except ValueError as e:
        raise SystemExit(f"cannot resume: {e}; delete it or pass --overwrite") from e
    if previous.get("format") != FORMAT or previous.get("settings") != settings:
        raise SystemExit(f"cannot resume: {path} was written with other settings")
    return previous


def run(c, ctx: Context, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Attack ``c.checkpoint`` as ``c`` says; write ``ctx.workdir/attack.json``; the results.

    ``resume`` continues a partial results file of the same settings; ``overwrite`` replaces
    an existing one (the two exclude each other).
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if not c.checkpoint:
        raise ValueError("config.checkpoint is required: the model directory to attack")
    attack_fn, config = build_attack(c)
    targeted = bool(getattr(config, "targeted", False))
    devices = jax.devices()
    if c.batch_size <= 0 or c.batch_size % len(devices):
        raise ValueError(f"batch_size must be a positive multiple of the {len(devices)} devices")
    if c.num_examples is not None and c.num_examples <= 0:
        raise ValueError(f"num_examples must be positive (None: all), got {c.num_examples}")

    data = load_dataset(c.dataset, c.split, ctx.data_dir, download=not ctx.offline)
    if c.num_examples is not None:
        data = data.take(c.num_examples)
    settings = {
        "checkpoint": str(pathlib.Path(c.checkpoint).resolve()),
        "dataset": c.dataset,
        "split": c.split,
        "data_dir": ctx.data_dir,
        "num_examples": len(data),
        "batch_size": c.batch_size,
        "seed": c.seed,
        "targeted": targeted,
        "attack": c.attack,
        "config": config_record(config),
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from the file (lists, …)
    output = ctx.workdir / OUTPUT
    if overwrite:
        output.unlink(missing_ok=True)
    state = load_previous(output, settings, resume)
    records, done = state["records"], state["batches_done"]

    model = load_model(c.checkpoint)
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
    key = jax.random.key(c.seed)
    n, bs = len(data), c.batch_size
    num_batches = -(-n // bs)

    def write(status: str) -> dict:
        result = {
            "format": FORMAT,
            "status": status,
            "settings": settings,
            "model_config": config_to_dict(mc),
            "devices": [str(d) for d in devices],
            "jax_version": jax.__version__,
            "batches_done": done,
            "records": records,
        }
        if records:
            r = {k: np.asarray([rec[k] for rec in records]) for k in records[0]}
            targets = r["target"] if targeted else None
            result["summary"] = attacks.summarize(
                r["label"],
                r["clean_pred"],
                r["adv_pred"],
                r["linf"],
                r["l2"],
                r["model_calls"],
                targets,
                r["valid"],
            ).as_dict()
        result = seal(result)  # a resumed run checks it: an edited record is refused
        write_json_atomic(output, result)
        return result

    progress = tqdm(total=num_batches, initial=done, desc=c.attack, unit="batch",
                    disable=ctx.quiet)  # fmt: skip
    for b in range(done, num_batches):
        index = np.arange(b * bs, min((b + 1) * bs, n))
        padded = np.concatenate([index, np.full(bs - len(index), index[-1])])  # one compile
        images = data.images[padded].astype(np.float32) / 255.0
        labels = data.labels[padded].astype(np.int32)
        kwargs = {"ids": jax.device_put(padded.astype(np.int32), batch_sharding)}
        targets = None
        if targeted:
            targets = random_targets(c.seed, padded, labels, mc.num_classes)
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
                # False where the re-checked logits were not finite: counted apart.
                "valid": bool(checked["valid"][j]),
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
    EventLog(ctx.workdir).write(s, tag=f"attack/{c.attack}")  # for TensorBoard
    print(
        f"{s.get('examples')} examples: clean accuracy {s.get('clean_accuracy')}, "
        f"robust accuracy {s.get('robust_accuracy')}, ASR {s.get('asr')}, "
        f"mean linf {s.get('mean_linf')}, mean l2 {s.get('mean_l2')}, invalid (non-finite) "
        f"{s.get('invalid')} -> {output}"
    )
    return out
