"""Exact sensitivity analysis of a checkpoint: branch alignment, the paper's theorems, local
Lipschitz constants (exact, empirical) and depth/noise cancellation.

    diffjax analyse --config=analyse --config.checkpoint=runs/diffvit \\
        --config.base_checkpoint=runs/vit --config.num_examples=32 --workdir runs/diffvit/analysis

Writes WORKDIR/settings.json, one WORKDIR/examples/NNNNNN.json per example (atomically, so an
interrupted run resumes where it stopped with the same settings) and WORKDIR/summary.json,
recomputed from all example files. Definitions: docs/analysis.md.

The checkpoint is a ViT model directory (diffjax's own, ``diffjax import-vit``) or a converted
CLIP / DiffCLIP (``diffjax convert-clip``): then the image tower is analysed through the
zero-shot head of one prompt per class of the dataset (``prompt``; logits are cosine
similarities), heads paired as for any softmax model (docs/import.md). It may also be a language
model directory (``diffjax import-lm``): then the examples are the lines of ``text``, each cut
to its first ``text_tokens`` tokens by the model's tokenizer, and the alignment part alone runs
(``wrt`` embeddings, block_input or attention_input; ``skip`` the other parts), every
(head pair, query row) as for a ViT; ``prediction`` is the next token the model predicts after
the window, ``label`` the line's next token (``None`` where the line ends there).

    diffjax analyse --config.checkpoint=models/llama --config.text=prompts.txt \\
        --config.wrt=embeddings --config.skip=lipschitz,empirical,depth --workdir out/lm
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from tqdm import tqdm

from diffjax import analysis as an
from diffjax import verify
from diffjax.checkpoint import (
    CheckpointError,
    is_lm_directory,
    load_lm_model,
    load_model,
    write_json_atomic,
)
from diffjax.clip import CLIP, load_clip, read_clip_config
from diffjax.clip.attack import prompt_classifier
from diffjax.data import load_dataset
from diffjax.experiments.common import Context
from diffjax.lm import LM
from diffjax.lm_import import TOKENIZER_FILE, load_tokenizer
from diffjax.records import EventLog
from diffjax.verify import radii as R

PARTS = ("alignment", "lipschitz", "empirical", "depth")
CERTIFY = ("certify", "certify_norm", "certify_hi", "certify_steps")
# The certified-accuracy curve of the summary: this many equal steps of ε up to certify_hi.
CURVE_POINTS = 20
QUANTILES = {
    "min": 0.0,
    "q05": 0.05,
    "q25": 0.25,
    "median": 0.5,
    "q75": 0.75,
    "q95": 0.95,
    "max": 1.0,
}


def _settings(args: argparse.Namespace) -> dict:
    keys = (
        "checkpoint",
        "base_checkpoint",
        "dataset",
        "split",
        "data_dir",
        "wrt",
        "head",
        "row",
        "precision",
        "lipschitz_method",
        "max_iters",
        "tol",
        "radius",
        "samples",
        "pgd_steps",
        "skip",
        "chunk",
        "seed",
    )
    s = {k: getattr(args, k) for k in keys}
    for k in ("checkpoint", "base_checkpoint", "data_dir"):
        s[k] = None if s[k] is None else str(pathlib.Path(s[k]).absolute())
    if args.certify:  # only then: earlier analyses resume with their settings unchanged
        s |= {k: getattr(args, k) for k in CERTIFY}
    return s


def _parse_row(row: str, num_tokens: int, class_token: bool = True) -> int | None:
    if row == "all":
        return None
    if row == "cls":
        if not class_token:
            raise ValueError("row 'cls': the model has no class token (give a row index or 'all')")
        return 0
    try:
        r = int(row)
    except ValueError:
        raise ValueError(f"row must be 'all', 'cls' or an integer, got {row!r}") from None
    if not 0 <= r < num_tokens:
        raise ValueError(f"row {r} outside 0..{num_tokens - 1}")
    return r


def _validate(args: argparse.Namespace) -> list[str]:
    for name in ("num_examples", "batch_size", "max_iters", "samples", "pgd_steps", "chunk"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1")
    if args.start < 0:
        raise ValueError("start must be >= 0")
    if not args.radius > 0:
        raise ValueError(f"radius must be > 0, got {args.radius}")
    if args.tol is not None and not args.tol > 0:
        raise ValueError(f"tol must be > 0, got {args.tol}")
    skip = [s for s in args.skip.split(",") if s]
    bad = sorted(set(skip) - set(PARTS))
    if bad:
        raise ValueError(f"skip: unknown parts {bad}; choose from {list(PARTS)}")
    if args.certify:
        R.check_method(args.certify, "certify")
        if args.certify_norm not in verify.NORMS:
            raise ValueError(f"certify_norm must be one of {verify.NORMS}, got "
                             f"{args.certify_norm!r}")  # fmt: skip
        if not args.certify_hi > 0:
            raise ValueError(f"certify_hi must be > 0, got {args.certify_hi}")
        if args.certify_steps < 1:
            raise ValueError(f"certify_steps must be >= 1, got {args.certify_steps}")
    return skip


def _check_base(c, b) -> None:
    """``c``, ``b``: the ViT configs of the model and its base (a CLIP's image tower)."""
    if b.attention != "softmax":
        raise ValueError("base_checkpoint must be a standard-attention (softmax) model")
    if c.attention != "diff":
        raise ValueError("base_checkpoint is for a Differential Attention checkpoint")
    for f in ("image_size", "patch_size", "channels", "depth", "num_heads"):
        if getattr(c, f) != getattr(b, f):
            raise ValueError(
                f"model and base differ in {f}: {getattr(c, f)} vs {getattr(b, f)}; γ needs the "
                "same token layout, depth and head pairing"
            )


def _load(directory: str):
    """A ViT model directory's model, a language model directory's :class:`LM`, or a converted
    CLIP directory's :class:`CLIP`."""
    if is_lm_directory(directory):
        return load_lm_model(directory)
    try:
        read_clip_config(directory)
    except CheckpointError:
        return load_model(directory)
    return load_clip(directory)


def _vit_config(model):
    """The analysed ViT's config: the model's, or a CLIP's image tower's."""
    return model.config.vision_config() if isinstance(model, CLIP) else model.config


def _analysed(model, precision: str, class_names, prompt: str):
    """``model`` computing in ``precision``; a CLIP as its image tower through the zero-shot
    head of one prompt per class (cosine similarities: the ViT interface)."""
    model = an.with_dtype(model, precision)
    if isinstance(model, CLIP):
        model = prompt_classifier(model, class_names, prompt)
    return model


def _analyse_fn(model, base, skip, opts):
    """The analysis of a batch of images [B, H, W, C] and keys [B] → a pytree of [B, ...].

    Each part, and each layer of a part, is its own jitted computation, and each one finishes
    before the next starts, so their while loops (Lanczos, chunked Jacobian products) never
    compete for XLA:CPU's thread pool (README, "Known issue"). The pieces are compiled once and
    reused.
    """
    depth = model.config.depth

    def in_turn(fn):
        return lambda *a: jax.block_until_ready(fn(*a))

    gram_kw = dict(wrt=opts["wrt"], head=opts["head"], row=opts["row"], chunk=opts["chunk"])
    lip_kw = dict(method=opts["method"], max_iters=opts["max_iters"], tol=opts["tol"])

    @in_turn
    @jax.jit
    def logits(model, images):
        return model(images)

    @in_turn
    @functools.partial(jax.jit, static_argnums=2)
    def grams(model, images, layer):
        z = an.layer_input(model, images, layer, opts["wrt"])
        return an.branch_grams(model, z, layer, **gram_kw)

    @in_turn
    @functools.partial(jax.jit, static_argnums=2)
    def layer_record(gram, gram_base, diff):
        rec = {"gram": gram, "layer_alignment": an.alignment(an.reduce_gram(gram, "all"))}
        if diff:
            if gram_base is not None:
                rec["gamma"] = an.gamma(gram, gram_base)
            rec["theory"] = an.check_theory(gram, gram_base)
        return rec

    @in_turn
    @functools.partial(jax.jit, static_argnums=2)
    def layer_lipschitz(model, images, layer, keys):
        u = an.layer_input(model, images, layer, "attention_input")
        return jax.vmap(
            lambda x, k: an.exact_local_lipschitz(
                lambda v: an.attention_layer(model, v, layer), x, key=k, **lip_kw
            )
        )(u, keys)

    @in_turn
    @jax.jit
    def logits_exact(model, images, keys):
        return jax.vmap(
            lambda x, k: an.exact_local_lipschitz(lambda v: an.logits(model, v), x, key=k, **lip_kw)
        )(images, keys)

    @in_turn
    @jax.jit
    def logits_sampling(model, images, keys):
        return jax.vmap(
            lambda x, k: an.sampled_lipschitz(
                lambda v: an.logits(model, v),
                x,
                radius=opts["radius"],
                num_samples=opts["samples"],
                key=k,
            )
        )(images, keys)

    @in_turn
    @jax.jit
    def logits_pgd(model, images, keys):
        return jax.vmap(
            lambda x, k: an.pgd_lipschitz(
                lambda v: an.logits(model, v),
                x,
                radius=opts["radius"],
                steps=opts["pgd_steps"],
                key=k,
            )[0]
        )(images, keys)

    @in_turn
    @jax.jit
    def depth_profile(model, images, keys):
        return jax.vmap(
            lambda x, k: an.depth_profile(model, x, key=k, radius=opts["radius"], **lip_kw)
        )(images, keys)

    def step(model, base, images, keys):
        out = {"logits": logits(model, images)}
        layer_keys = jax.vmap(lambda k: jax.random.split(k, depth + 4))(keys)
        if "alignment" not in skip:
            out["layers"] = []
            for layer in range(depth):
                diff = model.config.is_diff_layer(layer)
                gram_base = grams(base, images, layer) if diff and base is not None else None
                out["layers"].append(layer_record(grams(model, images, layer), gram_base, diff))
        if "lipschitz" not in skip:
            out["lipschitz"] = [
                layer_lipschitz(model, images, layer, layer_keys[:, layer])
                for layer in range(depth)
            ]
            out["logits_exact"] = logits_exact(model, images, layer_keys[:, depth])
        if "empirical" not in skip:
            out["logits_sampling"] = logits_sampling(model, images, layer_keys[:, depth + 1])
            out["logits_pgd"] = logits_pgd(model, images, layer_keys[:, depth + 3])
        if "depth" not in skip:
            out["depth"] = depth_profile(model, images, layer_keys[:, depth + 2])
        return out

    return step


def _clean(x):
    """JSON-ready: arrays to lists, NaN/inf to None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)):
        return _clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _lipschitz_record(e, i) -> dict:
    return {
        "kind": e.kind,
        "method": e.method,
        "value": e.value[i],
        "bound": e.bound[i],
        "products": e.products[i],
    }


def _example_record(out, i: int, index: int, label: int, model) -> dict:
    logits = out["logits"][i]
    if isinstance(model, LM):
        # The next token after the window (label −1: the line ends there); the vocabulary-wide
        # logits of every position are not kept.
        rec = {"index": index, "label": None if label < 0 else label,
               "prediction": int(np.argmax(logits[-1]))}  # fmt: skip
    else:
        # A headless backbone's "logits" are its pooled features: no class is predicted.
        headless = _vit_config(model).num_classes == 0
        prediction = None if headless else int(np.argmax(logits))
        rec = {"index": index, "label": label, "prediction": prediction, "logits": logits}
    if "layers" in out:
        rec["layers"] = []
        for layer, lo in enumerate(out["layers"]):
            a = an.alignment(jax.tree.map(lambda t: t[i], lo["gram"]))
            la = jax.tree.map(lambda t: t[i], lo["layer_alignment"])
            lr = {
                "layer": layer,
                "attention": "diff" if model.config.is_diff_layer(layer) else "softmax",
                "lambda": la.lam,
                "cos": a.cos,
                "rho": a.rho,
                "norm1": a.norm1,
                "norm2": a.norm2,
                "norm_da": a.norm_da,
                "layer_cos": la.cos,
                "layer_rho": la.rho,
            }
            if "theory" in lo:
                t = jax.tree.map(lambda x: x[i], lo["theory"])
                lr.update(
                    lemma1_rel_err=t.lemma1_rel_err,
                    theorem1_holds=t.theorem1_holds,
                    theorem1_position=t.theorem1_position,
                    ratio=t.ratio,
                    theorem2=t.theorem2,
                    theorem2_rel_err=t.theorem2_rel_err,
                    theorem3_predicted=t.theorem3_predicted,
                    theorem3_measured=t.theorem3_measured,
                )
            if "gamma" in lo:
                lr["gamma"] = lo["gamma"][i]
            rec["layers"].append(lr)
    if "lipschitz" in out:
        rec["attention_lipschitz"] = [_lipschitz_record(e, i) for e in out["lipschitz"]]
        rec["logits_lipschitz"] = {"exact_local": _lipschitz_record(out["logits_exact"], i)}
    if "logits_sampling" in out:
        lips = rec.setdefault("logits_lipschitz", {})
        lips["empirical_sampling"] = _lipschitz_record(out["logits_sampling"], i)
        lips["empirical_pgd"] = _lipschitz_record(out["logits_pgd"], i)
    if "depth" in out:
        rec["depth"] = {k: v[i] for k, v in vars(out["depth"]).items()}
    return _clean(jax.tree.map(np.asarray, rec))


def _stats(values) -> dict | None:
    v = np.asarray(
        [x for x in np.ravel(np.asarray(values, dtype=object)) if x is not None], dtype=np.float64
    )
    if v.size == 0:
        return None
    return {
        "count": int(v.size),
        "mean": float(v.mean()),
        **{k: float(np.quantile(v, q)) for k, q in QUANTILES.items()},
    }


def _frequency(values) -> float | None:
    v = [x for x in np.ravel(np.asarray(values, dtype=object)) if x is not None]
    return None if not v else float(np.mean(np.asarray(v, np.float64) < 0))


def summarise(records: list[dict], settings: dict) -> dict:
    """Aggregate per-example records (as written to disk) into the summary (the accuracy over
    the examples with a label: a language model's line may end at its window)."""
    scored = [r for r in records if r["label"] is not None]
    summary: dict = {
        "settings": settings,
        "num_examples": len(records),
        "accuracy": None
        if any(r["prediction"] is None for r in records) or not scored
        else float(np.mean([r["prediction"] == r["label"] for r in scored])),
    }
    if records and "layers" in records[0]:
        layers = []
        for layer, first in enumerate(records[0]["layers"]):
            per = [r["layers"][layer] for r in records]
            s = {
                "layer": layer,
                "attention": first["attention"],
                "lambda": first["lambda"],
                "negative_alignment_frequency": _frequency([p["cos"] for p in per]),
                "negative_alignment_frequency_layer": _frequency([p["layer_cos"] for p in per]),
                "cos": _stats([p["cos"] for p in per]),
                "rho": _stats([p["rho"] for p in per]),
            }
            if "lemma1_rel_err" in first:
                s["lemma1_max_rel_err"] = _stats([p["lemma1_rel_err"] for p in per])["max"]
                s["theorem1_violations"] = int(
                    sum(np.sum(~np.asarray(p["theorem1_holds"], bool)) for p in per)
                )
            if "gamma" in first:
                s["gamma"] = _stats([p["gamma"] for p in per])
                s["ratio_da_over_base"] = _stats([p["ratio"] for p in per])
                s["theorem2_max_rel_err"] = _stats([p["theorem2_rel_err"] for p in per])["max"]
                pred = np.concatenate([np.ravel(p["theorem3_predicted"]) for p in per])
                meas = np.concatenate([np.ravel(p["theorem3_measured"]) for p in per])
                s["theorem3_agreement"] = float(np.mean(pred == meas))
                s["da_more_sensitive_fraction"] = float(np.mean(meas))
            layers.append(s)
        summary["layers"] = layers
    if records and "attention_lipschitz" in records[0]:
        summary["attention_lipschitz"] = [
            {
                "layer": layer,
                "kind": "exact_local",
                "method": first["method"],
                "value": _stats([r["attention_lipschitz"][layer]["value"] for r in records]),
                "max_bound": _stats([r["attention_lipschitz"][layer]["bound"] for r in records])[
                    "max"
                ],
            }
            for layer, first in enumerate(records[0]["attention_lipschitz"])
        ]
    if records and "logits_lipschitz" in records[0]:
        lips = {
            k: _stats([r["logits_lipschitz"][k]["value"] for r in records])
            for k in records[0]["logits_lipschitz"]
        }
        if "exact_local" in lips and "empirical_pgd" in lips:
            for k in ("empirical_sampling", "empirical_pgd"):
                lips[f"{k}_over_exact"] = _stats(
                    [
                        r["logits_lipschitz"][k]["value"]
                        / r["logits_lipschitz"]["exact_local"]["value"]
                        for r in records
                    ]
                )
        summary["logits_lipschitz"] = lips
    if records and "depth" in records[0]:
        depth = {}
        for k in records[0]["depth"]:
            arr = np.asarray(
                [[np.nan if x is None else x for x in r["depth"][k]] for r in records], np.float64
            )
            depth[k] = [None if np.all(np.isnan(c)) else float(np.nanmean(c)) for c in arr.T]
        amp = np.asarray([r["depth"]["amplification"] for r in records], np.float64)
        bound = np.asarray([r["depth"]["paper_bound"] for r in records], np.float64)
        depth["paper_bound_holds_fraction"] = np.mean(amp <= bound, axis=0).tolist()
        summary["depth_mean"] = depth
    if records and "certified_radius" in records[0]:
        radius = [r["certified_radius"] for r in records]
        eps = (settings["certify_hi"] * np.arange(1, CURVE_POINTS + 1) / CURVE_POINTS).tolist()
        summary["certified"] = {
            "method": settings["certify"],
            "norm": settings["certify_norm"],
            "radius": _stats(radius),
            "eps": eps,
            "certified_accuracy": R.certified_accuracy(radius, eps),
        }
    return _clean(summary)


def _load_records(directory: pathlib.Path, indices) -> list[dict]:
    records = []
    for i in indices:
        path = directory / f"{i:06d}.json"
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise RuntimeError(f"cannot read example record {path}: {e}") from e
    return records


def _place(model, mesh):
    """Replicate a model's arrays over the mesh (a restored checkpoint sits on one device)."""
    if model is not None:
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, NamedSharding(mesh, PartitionSpec())))
    return model


def _certify(model, images, labels, args) -> np.ndarray:
    """Certified radii [B] of ``images`` (uint8 [B, H, W, C]) by bisection; ``model``: float64."""
    with jax.enable_x64(True):
        return R.certified_radii(
            model, images.astype(np.float64) / 255.0, np.asarray(labels, np.int32),
            norm=args.certify_norm, method=args.certify, hi=float(args.certify_hi),
            steps=int(args.certify_steps),
        )  # fmt: skip


def _image_inputs(args: argparse.Namespace, model, clip: bool):
    """A ViT's (or CLIP image tower's) inputs: (images [n, H, W, C] uint8, labels [n], class
    names, 255 (the divisor to [0, 1]))."""
    c = _vit_config(model)
    ds = load_dataset(args.dataset, args.split, args.data_dir)
    if clip and args.class_names:
        ds = ds.renamed(args.class_names)
    want = (c.image_size, c.image_size, c.channels)
    if tuple(ds.images.shape[1:]) != want:
        raise ValueError(
            f"dataset images are {tuple(ds.images.shape[1:])}, the model takes {want} (NHWC)"
        )
    if args.start + args.num_examples > len(ds):
        raise ValueError(
            f"start {args.start} + num_examples {args.num_examples} exceeds the "
            f"{len(ds)} examples of {args.dataset}/{args.split}"
        )
    return ds.images, ds.labels, ds.class_names, 255.0


def _text_inputs(args: argparse.Namespace, model: LM, skip: list[str]):
    """A language model's inputs: (token ids [n, text_tokens], next token [n] (−1 where the
    line ends there), None, None). Each non-empty line of ``args.text`` is one example, tokenized
    by the model directory's ``tokenizer.json`` and cut to its first ``text_tokens`` tokens."""
    if args.base_checkpoint is not None:
        raise ValueError("base_checkpoint (γ, Theorems 2-3) is for ViT and CLIP models, not "
                         "language models")  # fmt: skip
    if args.wrt == "image":
        raise ValueError(
            "a language model's tokens are not differentiable: give wrt 'embeddings' (the "
            "input embeddings), 'block_input' or 'attention_input'"
        )
    others = sorted(set(PARTS) - {"alignment"})
    if set(others) - set(skip):
        raise ValueError(
            "a language model is analysed by the alignment part only: add "
            f"--config.skip={','.join(others)}"
        )
    if not args.text:
        raise ValueError("a language model needs config.text: a text file, one prompt a line")
    if not 1 <= args.text_tokens <= model.config.max_len:
        raise ValueError(f"text_tokens must be in 1..{model.config.max_len} (the model's "
                         f"max_len), got {args.text_tokens}")  # fmt: skip
    tokenizer = load_tokenizer(pathlib.Path(args.checkpoint) / TOKENIZER_FILE)
    try:
        lines = [x for x in pathlib.Path(args.text).read_text().splitlines() if x.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read config.text {args.text}: {e}") from e
    if args.start + args.num_examples > len(lines):
        raise ValueError(f"start {args.start} + num_examples {args.num_examples} exceeds the "
                         f"{len(lines)} non-empty lines of {args.text}")  # fmt: skip
    n = args.text_tokens
    tokens, labels = [], []
    for i, line in enumerate(lines):
        ids = tokenizer.encode(line).ids
        if len(ids) < n:
            raise ValueError(f"{args.text}: non-empty line {i} has {len(ids)} tokens, fewer "
                             f"than text_tokens {n}")  # fmt: skip
        tokens.append(ids[:n])
        labels.append(ids[n] if len(ids) > n else -1)
    return np.asarray(tokens, np.int32), np.asarray(labels), None, None


def _run(args: argparse.Namespace) -> dict:
    """Analyse, write the example files and the summary; return the summary."""
    skip = _validate(args)
    model = _load(args.checkpoint)
    base = None if args.base_checkpoint is None else _load(args.base_checkpoint)
    clip, lm = isinstance(model, CLIP), isinstance(model, LM)
    if (clip or lm) and args.certify:
        raise ValueError("certify: the verifiers take ViT checkpoints, not a CLIP's image tower "
                         "or a language model")  # fmt: skip
    if base is not None and not lm:
        if isinstance(base, CLIP) != clip:
            raise ValueError("checkpoint and base_checkpoint must both be CLIP or both ViT models")
        _check_base(_vit_config(model), _vit_config(base))
    if lm:
        inputs, labels, class_names, scale = _text_inputs(args, model, skip)
        row = _parse_row(args.row, args.text_tokens, class_token=False)
    else:
        inputs, labels, class_names, scale = _image_inputs(args, model, clip)
        c = _vit_config(model)
        row = _parse_row(args.row, c.num_tokens, c.class_token)
    out = pathlib.Path(args.out)
    settings = _settings(args)
    if clip:  # only then: earlier ViT analyses resume with their settings unchanged
        settings |= {"prompt": args.prompt, "class_names": args.class_names or None}
    if lm:
        text = str(pathlib.Path(args.text).absolute())
        settings |= {"dataset": None, "split": None, "text": text, "text_tokens": args.text_tokens}
    settings_path = out / "settings.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old != _clean(settings):
            raise ValueError(
                f"{out} holds an analysis with other settings; use another --workdir.\n"
                f"stored: {old}\nnow:    {_clean(settings)}"
            )
    write_json_atomic(settings_path, _clean(settings))
    examples = out / "examples"
    indices = list(range(args.start, args.start + args.num_examples))
    todo = [i for i in indices if not (examples / f"{i:06d}.json").exists()]

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    if args.certify:  # once: the verifier compiles per model
        with jax.enable_x64(True):
            certified_model = an.with_dtype(model, "float64")
    with jax.enable_x64(args.precision == "float64"):
        as_vit = functools.partial(_analysed, precision=args.precision,
                                   class_names=class_names, prompt=args.prompt)  # fmt: skip
        model = _place(as_vit(model), mesh)
        base = None if base is None else _place(as_vit(base), mesh)
        opts = dict(
            wrt=args.wrt,
            head=args.head,
            row=row,
            chunk=args.chunk,
            method=args.lipschitz_method,
            max_iters=args.max_iters,
            tol=args.tol,
            radius=args.radius,
            samples=args.samples,
            pgd_steps=args.pgd_steps,
        )
        step = _analyse_fn(model, base, skip, opts)
        bs = -(-args.batch_size // jax.device_count()) * jax.device_count()
        root = jax.random.key(args.seed)
        with tqdm(
            total=len(indices), initial=len(indices) - len(todo), desc="analyse", unit="ex"
        ) as bar:
            for s in range(0, len(todo), bs):
                idx = todo[s : s + bs]
                padded = idx + [idx[-1]] * (bs - len(idx))  # one compiled shape for every batch
                images = inputs[padded]
                if scale is not None:  # pixels to [0, 1]; token ids stay as they are
                    images = images.astype(args.precision) / scale
                keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(padded))
                images, keys = jax.device_put((images, keys), batch_sharding)
                res = jax.tree.map(np.asarray, step(model, base, images, keys))
                if args.certify:
                    radius = _certify(certified_model, inputs[padded], labels[padded], args)
                for j, i in enumerate(idx):
                    rec = _example_record(res, j, i, int(labels[i]), model)
                    if args.certify:
                        rec["certified_radius"] = float(radius[j])
                    write_json_atomic(examples / f"{i:06d}.json", rec)
                bar.update(len(idx))
    summary = summarise(_load_records(examples, indices), _clean(settings))
    write_json_atomic(out / "summary.json", summary)
    return summary


def run(config, ctx: Context) -> dict:
    """Analyse as ``config`` (``configs/analyse.py``) says into ``ctx.workdir``; the summary."""
    if not config.checkpoint:
        raise ValueError("config.checkpoint is required: the model directory to analyse")
    fields = config.to_dict()
    fields.pop("experiment")
    fields |= {"base_checkpoint": config.base_checkpoint or None, "data_dir": ctx.data_dir,
               "out": str(ctx.workdir)}  # fmt: skip
    summary = _run(argparse.Namespace(**fields))
    events = EventLog(ctx.workdir)  # per layer, the layer index as TensorBoard's step
    for kind in ("layers", "attention_lipschitz"):
        for s in summary.get(kind, []):
            events.write(s, tag=f"analysis/{kind}", step=s["layer"])
    for s in summary.get("layers", []):
        print(
            f"layer {s['layer']} ({s['attention']}): negative-alignment frequency "
            f"{s['negative_alignment_frequency']:.4f}"
        )
    for s in summary.get("attention_lipschitz", []):
        print(
            f"layer {s['layer']}: exact local Lipschitz (attention layer, {s['method']}) "
            f"mean {s['value']['mean']:.6g} max {s['value']['max']:.6g}"
        )
    return summary
