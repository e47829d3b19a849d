"""Convert a released CLIP / DiffCLIP PyTorch checkpoint into a diffjax model directory.

Reads ``checkpoint_best.pt`` (from hammh0a/DiffCLIP_ViTB16_CC3M, …_CC12M, or the CLIP baselines
hammh0a/ViTB16_CC3M, …_CC12M), or an unmodified OpenAI / open_clip ``CLIP`` state dict
(``.pt``, ``.bin`` or ``.safetensors``; give ``--preset openai_b16`` etc.: the activation is not in
the weights; the sizes are read from it and must be the preset's, or with
``--sizes-from-weights`` ViT-B/32, L/14@336px, H/14 … convert with the preset of the same
activation), or a Hugging Face ``CLIPModel`` (``model.safetensors`` / ``pytorch_model.bin``
with its ``config.json`` and ``preprocessor_config.json`` beside it, which say every size, the
heads, activations, eps and image statistics; ``--preset`` stays ``auto``), without torch,
checks every key and shape against the architecture,
and writes ``OUT/config.json`` + ``OUT/params/`` (orbax) and ``OUT/conversion.json`` (source,
its SHA-256, tensor and parameter counts). Load the result with
``diffjax.clip.checkpoint.load_clip(OUT)``.

    diffjax convert-clip checkpoint_best.pt models/diffclip_cc3m
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pathlib

from tqdm import tqdm

from diffjax.clip.config import CLIP_PRESETS, clip_preset

RELEASE_PRESETS = {"softmax": "clip_b16", "diff": "diffclip_b16"}


def sha256(path: pathlib.Path) -> str:
    """SHA-256 hex digest of ``path``, read in 4 MiB blocks with a progress bar."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="sha256") as bar:
        while block := f.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=pathlib.Path, help="the weights: torch.save (.pt, .bin), .safetensors"
    )
    parser.add_argument("out", type=pathlib.Path, help="diffjax model directory to write")
    parser.add_argument(
        "--preset",
        default="auto",
        choices=["auto", *sorted(CLIP_PRESETS)],
        help="architecture of the checkpoint; 'auto' picks clip_b16 or diffclip_b16 from the "
        "keys of a SLIP/DiffCLIP release (OpenAI / open_clip state dicts need a preset: "
        "openai_b16, openai_l14 for QuickGELU weights, openclip_b16, openclip_l14 for GELU)",
    )
    parser.add_argument("--vision-heads", type=int,
                        help="OpenAI / open_clip layout: image-tower heads (not in the weights; "
                        "default: the preset's; needed for another width)")  # fmt: skip
    parser.add_argument(
        "--text-heads",
        type=int,
        help="OpenAI / open_clip layout: text-tower heads (as --vision-heads)",
    )
    parser.add_argument("--sizes-from-weights", action="store_true",
                        help="OpenAI / open_clip layout: convert a model whose sizes differ from "
                        "the preset's (ViT-B/32, H/14, …) with the preset's activation, eps and "
                        "statistics (without it, a size mismatch is refused)")  # fmt: skip
    parser.add_argument("--model-config", type=pathlib.Path,
                        help="Hugging Face CLIPModel: its config.json (default: the one beside "
                        "the weights)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")


def _hf_config(args: argparse.Namespace):
    """A Hugging Face CLIPModel's config from the config.json and preprocessor_config.json."""
    from diffjax.clip.convert import hf_config
    from diffjax.experiments.import_vit import preprocessor_hints, read_json

    if args.preset != "auto" or args.vision_heads or args.text_heads or args.sizes_from_weights:
        raise ValueError(
            f"{args.checkpoint} is a Hugging Face CLIPModel: its config.json says the "
            "architecture (no --preset, --vision-heads, --text-heads or --sizes-from-weights)"
        )
    path = args.model_config or args.checkpoint.parent / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: a Hugging Face CLIPModel needs its config.json (heads, "
            "activations, eps; --model-config to point at it)"
        )
    stats = preprocessor_hints(path.parent / "preprocessor_config.json")
    if not {"mean", "std"} <= set(stats):
        raise FileNotFoundError(
            f"no image_mean/image_std in {path.parent / 'preprocessor_config.json'}: download "
            "the checkpoint's preprocessor_config.json beside its config.json"
        )
    return hf_config(read_json(path), stats["mean"], stats["std"])


def run(args: argparse.Namespace) -> dict:
    """Convert ``args.checkpoint`` into ``args.out``; the conversion record.

    Raises:
      CheckpointError: the checkpoint is unreadable or does not fit the architecture.
      FileExistsError: ``args.out`` exists and ``args.overwrite`` is off.
    """
    # Imported here, not above: ``diffjax convert-clip --help`` and bad flags answer before JAX.
    from diffjax.checkpoint import save_model, write_json_atomic
    from diffjax.clip.convert import (
        convert_state_dict,
        detect_attention,
        detect_layout,
        openai_shapes,
    )
    from diffjax.torch_weights import read_weights
    from diffjax.vit import count_params

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    state = read_weights(args.checkpoint, progress=True)
    attention, layout = detect_attention(state), detect_layout(state)
    if args.preset == "auto" and layout == "openai":
        raise ValueError(
            f"{args.checkpoint} is an OpenAI / open_clip state dict, whose MLP activation is not "
            "in the weights: pass --preset openai_b16|openai_l14 (QuickGELU: OpenAI's weights, "
            "open_clip '-quickgelu' models) or openclip_b16|openclip_l14 (exact GELU)"
        )
    if layout == "hf":
        config, preset = _hf_config(args), "hf"
    else:
        preset = RELEASE_PRESETS[attention] if args.preset == "auto" else args.preset
        config = clip_preset(preset)
    if layout == "openai":  # sizes from the weights; activation, eps, statistics from the preset
        sized = openai_shapes(state, config, args.vision_heads, args.text_heads)
        # A wrong-size preset (openai_l14 for B/16 weights) would otherwise convert silently
        # with the sizes of the weights: a size mismatch must be asked for.
        differ = [f"{f.name} {getattr(config, f.name)} (weights: {getattr(sized, f.name)})"
                  for f in dataclasses.fields(config)
                  if getattr(config, f.name) != getattr(sized, f.name)]  # fmt: skip
        if differ and not args.sizes_from_weights:
            raise ValueError(
                f"{args.checkpoint} does not have the sizes of preset {preset}: "
                f"{', '.join(differ)}; pick the preset of its size, or pass "
                "--sizes-from-weights to convert it with this preset's activation, eps and "
                "statistics"
            )
        config = sized
    elif args.vision_heads is not None or args.text_heads is not None or args.sizes_from_weights:
        raise ValueError(
            "--vision-heads / --text-heads / --sizes-from-weights are for OpenAI / open_clip "
            "state dicts"
        )
    if args.model_config is not None and layout != "hf":
        raise ValueError("--model-config is for Hugging Face CLIPModel checkpoints")
    model = convert_state_dict(state, config)
    save_model(args.out, model)
    record = {
        "source": str(args.checkpoint.resolve()),
        "source_sha256": sha256(args.checkpoint),
        "preset": preset,
        "attention": attention,
        "layout": layout,
        "sizes_from_weights": bool(args.sizes_from_weights),
        "tensors": len(state),
        "parameters": count_params(model),
        "config": "config.json",
    }
    write_json_atomic(args.out / "conversion.json", record)
    print(f"wrote {args.out} ({preset}, {record['parameters']:,} parameters)")
    return record
