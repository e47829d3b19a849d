"""Import a timm or Hugging Face ViT / DINOv2 / SigLIP checkpoint into a diffjax model directory,
for the analysis.

Reads ``model.safetensors``, ``pytorch_model.bin`` or a ``torch.save`` ``.pt`` without torch,
reads the architecture from the keys and shapes (timm ``VisionTransformer``: ViT, DeiT, DINOv2
with or without registers, SigLIP's attention-pool ViTs, qk-norm, SwiGLU; timm ``Eva``: EVA-02
with its 2-D rotary positions, given by ``--rope-base``/``--rope-ref-grid`` or its hub
config's ``model_args``; Hugging Face
``ViTForImageClassification``, ``Dinov2Model`` or ``SiglipVisionModel``), checks every key
and shape, and writes ``OUT/config.json``, ``OUT/params/`` and ``OUT/conversion.json``
(source, SHA-256, layout, the config). What the weights do not say comes from the flags and
from the files beside the weights: ``config.json`` (Hugging Face: heads, eps, activation;
timm's hub config: mean and std) and ``preprocessor_config.json`` (Hugging Face: mean and
std); a flag that contradicts them is refused. The image statistics have no silent default:
give ``--mean``/``--std``, ship the config files, or say ``--assume-imagenet-stats``. A
headless backbone (timm ``num_classes=0``, ``Dinov2Model``, ``SiglipVisionModel``) outputs its
pooled features. Then ``diffjax analyse --config.checkpoint=OUT`` (or ``diffjax attack``) runs
on it like on any diffjax model.

    diffjax import-vit model.safetensors models/vit_b16 --num-heads 12
    diffjax analyse --config.checkpoint=models/vit_b16 --config.dataset=... --workdir out/an
"""

from __future__ import annotations

import argparse
import json
import pathlib

from diffjax.config import ACTIVATIONS, IMAGENET_MEAN, IMAGENET_STD

# Hugging Face ``hidden_act`` → ViTConfig.activation.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                  "quick_gelu": "quick_gelu", "relu": "relu"}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=pathlib.Path,
                        help="the weights: .safetensors, or torch.save .pt/.pth/.bin")  # fmt: skip
    parser.add_argument("out", type=pathlib.Path, help="diffjax model directory to write")
    parser.add_argument("--num-heads", type=int, help="attention heads (not in the weights)")
    parser.add_argument("--image-size", type=int,
                        help="input size; another than the checkpoint's resamples the position "
                        "embeddings (bicubic, as timm)")  # fmt: skip
    parser.add_argument("--activation", choices=ACTIVATIONS, help="MLP activation")
    parser.add_argument("--layer-norm-eps", type=float, help="LayerNorm epsilon")
    parser.add_argument("--mean", type=float, nargs=3, help="per-channel mean of [0, 1] pixels")
    parser.add_argument("--std", type=float, nargs=3, help="per-channel std of [0, 1] pixels")
    parser.add_argument("--assume-imagenet-stats", action="store_true",
                        help="use the ImageNet mean/std when neither the flags nor the files "
                        "beside the weights give them")  # fmt: skip
    parser.add_argument("--model-config", type=pathlib.Path,
                        help="the checkpoint's config.json (default: the one beside the weights, "
                        "if any)")  # fmt: skip
    parser.add_argument("--rope-base", type=float,
                        help="timm EVA-02: θ of the 2-D rotary positions (its rope_temperature, "
                        "10000); not in the weights")  # fmt: skip
    parser.add_argument("--rope-ref-grid", type=int,
                        help="timm EVA-02: its ref_feat_shape side (the pretraining patch grid, "
                        "16 for the 224-px patch-14 models); default unscaled")  # fmt: skip
    parser.add_argument("--no-rope", action="store_true",
                        help="a timm EVA without rotary positions (EVA-01)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")


# timm ``act_layer`` names (as its hub config.json writes them) → ViTConfig.activation.
TIMM_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu",
                    "silu": "silu", "swish": "silu"}  # fmt: skip
# timm ``global_pool`` → ViTConfig.pool (what the weights cannot always tell apart: a model
# pooled by the mean without fc_norm has the keys of a class-token model).
TIMM_POOLS = {"token": "cls", "avg": "mean", "map": "map"}
# Hugging Face model types whose config.json this importer reads (the weights decide the rest).
HF_MODEL_TYPES = ("vit", "dinov2", "siglip_vision_model")


def read_json(path: pathlib.Path) -> dict:
    """The JSON object of a model config file (ValueError naming the file otherwise)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a JSON object")
    return d


def config_hints(path: pathlib.Path | None) -> dict:
    """ViTConfig fields from a Hugging Face or timm ``config.json`` (missing file: none)."""
    if path is None or not path.is_file():
        return {}
    d = read_json(path)
    hints = {}
    if "num_attention_heads" in d:  # Hugging Face ViTConfig / Dinov2Config / SiglipVisionConfig
        kind = d.get("model_type", "vit")
        if kind not in HF_MODEL_TYPES:
            raise ValueError(f"{path}: model_type {kind!r} is not one of {HF_MODEL_TYPES}")
        hints["num_heads"] = int(d["num_attention_heads"])
        if "layer_norm_eps" in d:
            hints["layer_norm_eps"] = float(d["layer_norm_eps"])
        act = d.get("hidden_act", "gelu")
        if act not in HF_ACTIVATIONS:
            raise ValueError(f"{path}: hidden_act {act!r} is not one of {sorted(HF_ACTIVATIONS)}")
        # A Dinov2 SwiGLU MLP is SiLU-gated whatever hidden_act says (transformers' own rule).
        hints["activation"] = "silu" if d.get("use_swiglu_ffn") else HF_ACTIVATIONS[act]
    architecture = str(d.get("architecture", ""))  # timm's hub config
    if architecture.startswith(tuple(EVA_ARCHITECTURES)):
        hints |= eva_hints(path, architecture, d.get("model_args", {}))
    pretrained = d.get("pretrained_cfg", {})
    for key in ("mean", "std"):
        if key in pretrained:
            hints[key] = tuple(float(v) for v in pretrained[key])
    args = d.get("model_args", {})
    if "num_heads" in args:
        hints["num_heads"] = int(args["num_heads"])
    if "act_layer" in args:
        if args["act_layer"] not in TIMM_ACTIVATIONS:
            raise ValueError(f"{path}: act_layer {args['act_layer']!r} is not one of "
                             f"{sorted(TIMM_ACTIVATIONS)}")  # fmt: skip
        hints["activation"] = TIMM_ACTIVATIONS[args["act_layer"]]
    pool = d.get("global_pool", args.get("global_pool"))
    if pool is not None:
        if pool not in TIMM_POOLS:
            raise ValueError(f"{path}: global_pool {pool!r} is not one of {sorted(TIMM_POOLS)}")
        hints["pool"] = TIMM_POOLS[pool]
    return hints


# timm Eva arguments diffjax does not model, with the value it does model.
EVA_UNMODELLED_ARGS = {"use_post_norm": False, "scale_attn_inner": False, "gated_attn": False,
                       "rope_type": "cat", "rope_rotate_half": False, "rope_grid_offset": 0,
                       "rope_grid_indexing": "ij", "attn_type": "eva"}  # fmt: skip


# The rotary settings of timm's architectures by name prefix: every registered ``eva02_*``
# has use_rot_pos_emb=True, rope_temperature 10000 and ref_feat_shape (16, 16); ``eva_*``
# (EVA-01) has no RoPE. A hub config.json's ``model_args`` holds only the arguments given to
# create_model, not these defaults, so they are restated here.
EVA_ARCHITECTURES = {"eva02_": dict(rope_base=10000.0, rope_ref_grid=16),
                     "eva_": dict(rope_base=None)}  # fmt: skip


def eva_hints(path: pathlib.Path, architecture: str, args: dict) -> dict:
    """The rotary fields of a timm EVA hub config: the architecture's
    (:data:`EVA_ARCHITECTURES`), then what its ``model_args`` change (``use_rot_pos_emb``,
    ``rope_temperature``, a square ``ref_feat_shape``).

    Raises:
      ValueError: an argument of :data:`EVA_UNMODELLED_ARGS` at another value, or a
        non-square ``ref_feat_shape``.
    """
    bad = [f"{k}={args[k]!r}" for k, v in EVA_UNMODELLED_ARGS.items() if args.get(k, v) != v]
    if bad:
        raise ValueError(f"{path}: a timm EVA with {', '.join(bad)}, which diffjax does not model")
    hints = next(dict(h) for prefix, h in EVA_ARCHITECTURES.items()
                 if architecture.startswith(prefix))  # fmt: skip
    if args.get("use_rot_pos_emb") is False:
        return dict(rope_base=None)
    if args.get("use_rot_pos_emb") or hints["rope_base"] is not None:
        hints["rope_base"] = float(args.get("rope_temperature", 10000.0))
    ref = args.get("ref_feat_shape")
    if ref is not None:
        side = {int(ref)} if isinstance(ref, int) else {int(r) for r in ref}
        if len(side) != 1:
            raise ValueError(f"{path}: ref_feat_shape {ref!r} is not square")
        hints["rope_ref_grid"] = side.pop()
    return hints


def preprocessor_hints(path: pathlib.Path) -> dict:
    """``mean`` and ``std`` from a Hugging Face ``preprocessor_config.json`` (none if absent)."""
    if not path.is_file():
        return {}
    d = read_json(path)
    if d.get("do_normalize", True) is False:
        return dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    keys = (("mean", "image_mean"), ("std", "image_std"))
    return {ours: tuple(float(v) for v in d[theirs]) for ours, theirs in keys if theirs in d}


def merge_hints(hints: dict, flags: dict) -> dict:
    """``hints`` (from the files) updated by the ``flags`` given (not ``None``).

    Raises:
      ValueError: a flag that contradicts a file, naming both values.
    """
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items() if v is not None}
    clash = [f"{k}: flag {given[k]!r}, file {hints[k]!r}"
             for k in sorted(set(given) & set(hints)) if given[k] != hints[k]]  # fmt: skip
    if clash:
        raise ValueError(
            "the flags contradict the checkpoint's config files (" + "; ".join(clash) + "): "
            "drop the flag, or point --model-config at the right file"
        )
    return hints | given


def run(args: argparse.Namespace) -> dict:
    """Import ``args.weights`` into ``args.out``; the conversion record.

    Raises:
      CheckpointError: unreadable weights or keys/shapes that do not fit.
      ValueError: no head count given or found, or a bad model config.
      FileExistsError: ``args.out`` exists and ``args.overwrite`` is off.
    """
    # Imported here, not above: ``diffjax import-vit --help`` and bad flags answer before JAX.
    from diffjax.checkpoint import config_to_dict, save_model, write_json_atomic
    from diffjax.experiments.convert_clip import sha256
    from diffjax.torch_weights import read_weights
    from diffjax.vit import count_params
    from diffjax.vit_import import convert_vit, detect_layout, infer_config, is_eva

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    model_config = args.model_config or args.weights.parent / "config.json"
    if args.model_config is not None and not model_config.is_file():
        raise FileNotFoundError(f"model config {model_config} does not exist")
    hints = config_hints(model_config) | preprocessor_hints(
        args.weights.parent / "preprocessor_config.json"
    )
    flags = dict(num_heads=args.num_heads, activation=args.activation,
                 layer_norm_eps=args.layer_norm_eps, mean=args.mean, std=args.std,
                 rope_base=args.rope_base, rope_ref_grid=args.rope_ref_grid)  # fmt: skip
    if args.no_rope:
        if args.rope_base is not None or args.rope_ref_grid is not None:
            raise ValueError("--no-rope contradicts --rope-base/--rope-ref-grid: give one")
        if hints.get("rope_base") is not None:
            raise ValueError("--no-rope contradicts the config file's use_rot_pos_emb")
        hints = hints | dict(rope_base=None)
    fields = merge_hints(hints, flags)
    if "num_heads" not in fields:
        raise ValueError("--num-heads is required (the weights do not hold the head count)")
    if args.assume_imagenet_stats and (args.mean or args.std):
        raise ValueError("--assume-imagenet-stats contradicts --mean/--std: give one of them")
    stats = "flags" if args.mean and args.std else "config files"
    if not {"mean", "std"} <= set(fields):
        stats = "assumed ImageNet (--assume-imagenet-stats)"
        if not args.assume_imagenet_stats:
            raise ValueError(
                "the image mean/std are not in the weights and no config file beside them says "
                "them (timm config.json, Hugging Face preprocessor_config.json): give --mean and "
                "--std, or --assume-imagenet-stats"
            )
        fields = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD) | fields
    state = read_weights(args.weights, progress=True)
    architecture = read_json(model_config).get("architecture") if model_config.is_file() else None
    if is_eva(state) and architecture and not architecture.startswith(tuple(EVA_ARCHITECTURES)):
        # timm's other Eva-class models (vit_*_rope_*, vit_pe_*) lay out their rotary grid
        # otherwise (xy indexing, offset 1) by architecture defaults the weights do not show.
        raise ValueError(f"{model_config}: architecture {architecture!r} is a timm Eva-class "
                         "model whose rotary layout diffjax does not model (eva02_* and eva_* "
                         "are)")  # fmt: skip
    config = infer_config(state, image_size=args.image_size, **fields)
    model = convert_vit(state, config)
    save_model(args.out, model)
    record = {
        "source": str(args.weights.resolve()),
        "source_sha256": sha256(args.weights),
        "layout": detect_layout(state),
        "model_config": str(model_config) if model_config.is_file() else None,
        "statistics": stats,
        "tensors": len(state),
        "parameters": count_params(model),
        "config": config_to_dict(config),
    }
    write_json_atomic(args.out / "conversion.json", record)
    print(f"wrote {args.out} ({record['layout']} ViT, {record['parameters']:,} parameters)")
    return record
