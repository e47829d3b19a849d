"""Max |Δ| between imported models and the real libraries' (timm, transformers, open_clip) on
shared random weights, float32 and float64: the parity tests' reduced models; with ``--full``
the full-size timm ``vit_base_patch16_224`` and open_clip ``ViT-B-16-quickgelu`` / ``ViT-B-16``
(minutes on a 2-core CPU); with ``--large`` open_clip ``ViT-L-14``, image and text towers (about
8 GB of memory; ``--only`` skips the reduced models). Needs the ``test`` extra.

    python -m benchmarks.import_parity [--full] [--large] [--only]
"""

from __future__ import annotations

import argparse
import gc

import jax
import numpy as np
import open_clip
import timm
import torch
import transformers
from timm.models.vision_transformer import checkpoint_filter_fn

from diffjax.clip.config import clip_preset
from diffjax.clip.convert import convert_state_dict
from diffjax.vit_import import convert_vit, infer_config
from tests import test_clip_openclip as C
from tests import test_vit_import as T


def reduced() -> None:
    for case, (name, kwargs, overrides) in sorted(T.TIMM_CASES.items()):
        ref = T._randomise(timm.create_model(name, pretrained=False, **T.TINY, **kwargs))
        state = T._state(ref)
        config = infer_config(state, num_heads=4, **overrides)
        d = T._max_diffs(convert_vit(state, config), config, ref, T._images())
        print(f"timm {case}: logits float32 {d[0]:.2g} float64 {d[1]:.2g}")
    small = T._randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, **T.TINY))
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**T.TINY, "img_size": 48})
    big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
    config = infer_config(T._state(small), num_heads=4, image_size=48)
    d = T._max_diffs(convert_vit(T._state(small), config), config, big.eval(), T._images(size=48))
    print(f"timm 32 px resampled to 48 px: logits float32 {d[0]:.2g} float64 {d[1]:.2g}")
    for act, ours in sorted(T.HF_ACTS.items()):
        hf = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    num_labels=5, hidden_act=act)  # fmt: skip
        torch.manual_seed(0)
        ref = T._randomise(transformers.ViTForImageClassification(hf))
        state = T._state(ref)
        config = infer_config(state, num_heads=4, activation=ours)
        d = T._max_diffs(convert_vit(state, config), config, ref, T._images(), hf=True)
        print(f"Hugging Face ViT {act}: logits float32 {d[0]:.2g} float64 {d[1]:.2g}")
    for preset in ("openclip_b16", "openai_b16"):
        ref = C._small_reference(preset.startswith("openai"))
        config = clip_preset(preset, **C.SMALL)
        state = {k: v.numpy() for k, v in ref.state_dict().items()}
        images, tokens = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), C._tokens()
        got = C._features(convert_state_dict(state, config), images.astype(np.float32), tokens)
        want = C._reference_features(ref, images, tokens, config, torch.float32)
        with jax.enable_x64():
            model = convert_state_dict(state, config.replace(dtype="float64"))
            got64 = C._features(model, images, tokens)
        want64 = C._reference_features(ref, images, tokens, config, torch.float64)
        for i, tower in enumerate(("image", "text")):
            d32, d64 = np.abs(got[i] - want[i]).max(), np.abs(got64[i] - want64[i]).max()
            print(f"open_clip {preset} {tower}: float32 {d32:.2g} float64 {d64:.2g}")


def _timm_full() -> None:
    x = T._images(1, 224)
    torch.manual_seed(0)  # the libraries' own random initialisation
    ref = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    state = T._state(ref)
    config = infer_config(state, num_heads=12)
    d32, d64 = T._max_diffs(convert_vit(state, config), config, ref, x)
    print(f"timm vit_base_patch16_224 (full): logits float32 {d32:.2g} float64 {d64:.2g}")


def _open_clip_full(name: str, preset: str) -> None:
    """One full-size open_clip model with its own random initialisation, one image and one text,
    float32 then float64, holding at most one torch and one JAX copy of the weights at a time
    (ViT-L-14: 428M parameters, 3.4 GB per float64 copy)."""
    x, tokens = T._images(1, 224), C._tokens(1)
    torch.manual_seed(0)
    ref = open_clip.create_model(name, pretrained=None).eval()
    config = clip_preset(preset)
    diffs = {}
    for dtype, tdtype in (("float32", torch.float32), ("float64", torch.float64)):
        with jax.enable_x64(dtype == "float64"):
            state = {k: v.numpy() for k, v in ref.state_dict().items()}
            model = convert_state_dict(state, config.replace(dtype=dtype))
            del state
            got = C._features(model, x.astype(dtype), tokens)
            del model
        want = C._reference_features(ref, x, tokens, config, tdtype)  # casts ref in place
        diffs[dtype] = [np.abs(g - w).max() for g, w in zip(got, want, strict=True)]
        del got, want
        gc.collect()
    for i, tower in enumerate(("image", "text")):
        print(f"open_clip {name} (full, {preset}) {tower}: float32 {diffs['float32'][i]:.2g} "
              f"float64 {diffs['float64'][i]:.2g}")  # fmt: skip


def full() -> None:
    _timm_full()
    _open_clip_full("ViT-B-16-quickgelu", "openai_b16")
    _open_clip_full("ViT-B-16", "openclip_b16")


def large() -> None:
    _open_clip_full("ViT-L-14", "openclip_l14")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also the full-size B/16 models")
    parser.add_argument("--large", action="store_true", help="also open_clip ViT-L-14")
    parser.add_argument("--only", action="store_true", help="skip the reduced models")
    args = parser.parse_args()
    if not args.only:
        reduced()
    if args.full:
        full()
    if args.large:
        large()


if __name__ == "__main__":
    main()
