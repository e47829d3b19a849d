"""Import a timm or Hugging Face ViT checkpoint into a diffjax model directory, for the analysis.

Reads ``model.safetensors``, ``pytorch_model.bin`` or a ``torch.save`` ``.pt`` without torch,
reads the architecture from the keys and shapes (timm ``VisionTransformer`` / DeiT, or Hugging
Face ``ViTForImageClassification``), checks every key and shape, and writes ``OUT/config.json``,
``OUT/params/`` and ``OUT/conversion.json`` (source, SHA-256, layout, the config). What the
weights do not say comes from the flags, else from a ``config.json`` beside the weights (the
Hugging Face ``ViTConfig``: heads, eps, activation, image size; timm's hub ``config.json``: mean
and std), else from the library's defaults. Then ``diffjax analyse --config.checkpoint=OUT``
(or ``diffjax attack``) runs on it like on any diffjax model.

    diffjax import-vit model.safetensors models/vit_b16 --num-heads 12
    diffjax analyse --config.checkpoint=models/vit_b16 --config.dataset=... --workdir out/an
"""

from __future__ import annotations

import argparse
import json
import pathlib

from diffjax.checkpoint import config_to_dict, save_model, write_json_atomic
from diffjax.config import ACTIVATIONS
from diffjax.experiments.convert_clip import sha256
from diffjax.torch_weights import read_weights
from diffjax.vit import count_params
from diffjax.vit_import import convert_vit, detect_layout, infer_config

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
    parser.add_argument("--model-config", type=pathlib.Path,
                        help="the checkpoint's config.json (default: the one beside the weights, "
                        "if any)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")


def config_hints(path: pathlib.Path | None) -> dict:
    """ViTConfig fields from a Hugging Face or timm ``config.json`` (missing file: none)."""
    if path is None or not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from e
    hints = {}
    if "num_attention_heads" in d:  # Hugging Face ViTConfig
        hints["num_heads"] = int(d["num_attention_heads"])
        if "layer_norm_eps" in d:
            hints["layer_norm_eps"] = float(d["layer_norm_eps"])
        act = d.get("hidden_act", "gelu")
        if act not in HF_ACTIVATIONS:
            raise ValueError(f"{path}: hidden_act {act!r} is not one of {sorted(HF_ACTIVATIONS)}")
        hints["activation"] = HF_ACTIVATIONS[act]
    pretrained = d.get("pretrained_cfg", {})  # timm's hub config
    for key in ("mean", "std"):
        if key in pretrained:
            hints[key] = tuple(float(v) for v in pretrained[key])
    return hints


def run(args: argparse.Namespace) -> dict:
    """Import ``args.weights`` into ``args.out``; the conversion record.

    Raises:
      CheckpointError: unreadable weights or keys/shapes that do not fit.
      ValueError: no head count given or found, or a bad model config.
      FileExistsError: ``args.out`` exists and ``args.overwrite`` is off.
    """
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    model_config = args.model_config or args.weights.parent / "config.json"
    if args.model_config is not None and not model_config.is_file():
        raise FileNotFoundError(f"model config {model_config} does not exist")
    hints = config_hints(model_config)
    flags = dict(num_heads=args.num_heads, activation=args.activation,
                 layer_norm_eps=args.layer_norm_eps, mean=args.mean, std=args.std)  # fmt: skip
    fields = hints | {k: tuple(v) if isinstance(v, list) else v
                      for k, v in flags.items() if v is not None}  # fmt: skip
    if "num_heads" not in fields:
        raise ValueError("--num-heads is required (the weights do not hold the head count)")
    state = read_weights(args.weights, progress=True)
    config = infer_config(state, image_size=args.image_size, **fields)
    model = convert_vit(state, config)
    save_model(args.out, model)
    record = {
        "source": str(args.weights.resolve()),
        "source_sha256": sha256(args.weights),
        "layout": detect_layout(state),
        "model_config": str(model_config) if hints else None,
        "tensors": len(state),
        "parameters": count_params(model),
        "config": config_to_dict(config),
    }
    write_json_atomic(args.out / "conversion.json", record)
    print(f"wrote {args.out} ({record['layout']} ViT, {record['parameters']:,} parameters)")
    return record
