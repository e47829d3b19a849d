"""Max |Δ| between imported models and the real libraries' (timm, transformers, open_clip) on
shared random weights: the parity tests' reduced models in float32 and float64, and with
``--full`` the full-size timm ``vit_base_patch16_224`` and open_clip ``ViT-B-16-quickgelu`` in
float32 (minutes on a 2-core CPU). Needs the ``test`` extra.

    python -m benchmarks.import_parity [--full]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import open_clip
import timm
import torch
import transformers
from flax import nnx
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


def full() -> None:
    x = T._images(1, 224)
    torch.manual_seed(0)  # the libraries' own random initialisation
    ref = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    state = T._state(ref)
    config = infer_config(state, num_heads=12)
    got = nnx.jit(lambda m, x: m(x))(convert_vit(state, config), x.astype(np.float32))
    want = T._torch_logits(ref, x, config.mean, config.std, torch.float32)
    print(f"timm vit_base_patch16_224 (full): logits float32 {np.abs(got - want).max():.2g}")
    ref = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    config, tokens = clip_preset("openai_b16"), C._tokens(1)
    got = C._features(convert_state_dict(state, config), x.astype(np.float32), tokens)
    want = C._reference_features(ref, x, tokens, config, torch.float32)
    for i, tower in enumerate(("image", "text")):
        print(f"open_clip ViT-B-16-quickgelu (full) {tower}: float32 "
              f"{np.abs(got[i] - want[i]).max():.2g}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also the full-size B/16 models")
    args = parser.parse_args()
    reduced()
    if args.full:
        full()


if __name__ == "__main__":
    main()
