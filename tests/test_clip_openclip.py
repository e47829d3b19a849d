"""OpenAI / open_clip CLIP state dicts into diffjax: unmodified ``open_clip`` state dicts convert,
and the image and text features match open_clip's own model on shared random weights.

* Layout (full size): the keys and shapes of ``open_clip.create_model(name, pretrained=None)``
  for ViT-B-16, ViT-B-16-quickgelu and ViT-L-14-quickgelu (the layout of OpenAI's weights)
  are exactly the converter's, and the activation, LayerNorm eps and image statistics of the
  presets are open_clip's (built on the meta device: shapes only).
* Numbers: ``open_clip.CLIP`` built from the ViT-B-16 config at reduced width and depth (2 layers
  per tower, image width 64, text width 32, 32 px images), random weights, float32 and float64.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from diffjax.clip.config import clip_preset  # noqa: E402
from diffjax.clip.convert import (  # noqa: E402
    conversion_rules,
    convert_checkpoint,
    convert_state_dict,
    detect_layout,
)

FULL = [("ViT-B-16", "openclip_b16"), ("ViT-B-16-quickgelu", "openai_b16"),
        ("ViT-L-14-quickgelu", "openai_l14")]  # fmt: skip
SMALL = dict(embed_dim=16, image_size=32, vision_width=64, vision_layers=2, vision_heads=4,
             text_width=32, text_layers=2, text_heads=4)  # fmt: skip


@pytest.mark.parametrize("name,preset", FULL)
def test_full_size_layout_matches_open_clip(name, preset):
    model = open_clip.create_model(name, pretrained=None, device="meta")
    config = clip_preset(preset)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert detect_layout(state) == "openai"
    rules = {k: shape for k, (shape, _) in conversion_rules(config, "openai").items()}
    assert state == rules
    quick = name.endswith("quickgelu")
    for mlp in (model.visual.transformer.resblocks[0].mlp, model.transformer.resblocks[0].mlp):
        assert type(mlp.gelu).__name__ == ("QuickGELU" if quick else "GELU")
        assert getattr(mlp.gelu, "approximate", "none") == "none"
    act = "quick_gelu" if quick else "gelu"
    assert config.vision_activation == config.text_activation == act
    assert model.visual.ln_pre.eps == config.vision_ln_eps == 1e-5
    assert model.ln_final.eps == config.text_ln_eps == 1e-5
    assert config.mean == open_clip.OPENAI_DATASET_MEAN
    assert config.std == open_clip.OPENAI_DATASET_STD
    assert model.visual.conv1.bias is None and not config.vision_patch_bias


def _small_reference(quick_gelu: bool, seed=0):
    cfg = open_clip.get_model_config("ViT-B-16")
    vision = dict(cfg["vision_cfg"], layers=2, width=64, head_width=16, image_size=32)
    text = dict(cfg["text_cfg"], layers=2, width=32, heads=4)
    ref = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
                p.copy_(1 + 0.2 * r)
            else:
                p.copy_(r * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return ref.eval()


def _tokens(n=3, seed=2):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, 77), np.int64)
    for row in range(n):  # random body, EOT (the largest id) at a random position, zero padding
        length = int(rng.integers(1, 76))
        tokens[row, :length] = rng.integers(1, 49406, length)
        tokens[row, length] = 49407
    return tokens


def _features(model, images, tokens):
    img = nnx.jit(lambda m, x: m.encode_image(x))(model, images)
    txt = nnx.jit(lambda m, t: m.encode_text(t))(model, tokens.astype(np.int32))
    return np.asarray(img), np.asarray(txt)


def _reference_features(ref, images, tokens, config, dtype):
    x = (images - np.asarray(config.mean)) / np.asarray(config.std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
    ref = ref.to(dtype)
    with torch.no_grad():
        return ref.encode_image(x).numpy(), ref.encode_text(torch.from_numpy(tokens)).numpy()


@pytest.mark.parametrize("preset", ["openclip_b16", "openai_b16"])
def test_features_match_open_clip(preset, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    ref = _small_reference(quick_gelu=preset.startswith("openai"))
    config = clip_preset(preset, **SMALL)
    # The unmodified state dict, as open_clip's Hugging Face repositories hold it.
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    safetensors_torch.save_file(sd, tmp_path / "open_clip_model.safetensors")
    model = convert_checkpoint(tmp_path / "open_clip_model.safetensors", config)
    images = np.random.default_rng(1).uniform(size=(2, 32, 32, 3))
    tokens = _tokens()
    img, txt = _features(model, images.astype(np.float32), tokens)
    want_img, want_txt = _reference_features(ref, images, tokens, config, torch.float32)
    assert np.max(np.abs(img - want_img)) < 2e-5 and np.max(np.abs(txt - want_txt)) < 2e-5
    with jax.enable_x64():
        state = {k: v.numpy() for k, v in ref.state_dict().items()}
        model64 = convert_state_dict(state, config.replace(dtype="float64"))
        img64, txt64 = _features(model64, images, tokens)
    assert img64.dtype == np.float64
    want_img, want_txt = _reference_features(ref, images, tokens, config, torch.float64)
    assert np.max(np.abs(img64 - want_img)) < 1e-12 and np.max(np.abs(txt64 - want_txt)) < 1e-12


def test_auto_preset_refuses_open_clip_weights(tmp_path, capsys):
    from diffjax.clip import read_clip_config
    from tests.commandline import diffjax, diffjax_error

    ref = _small_reference(quick_gelu=False)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    err = diffjax_error(capsys, "convert-clip", str(tmp_path / "w.pt"), str(tmp_path / "out"))
    assert "activation is not in the weights" in err and "openai_b16" in err
    # The sizes are read from the weights; the head counts are not in them.
    args = ("convert-clip", str(tmp_path / "w.pt"), str(tmp_path / "out"), "--preset", "openai_b16",
            "--sizes-from-weights")
    err = diffjax_error(capsys, *args)
    assert "the vision tower is 64 wide, the preset's 768: give the vision head count" in err
    diffjax(*args, "--vision-heads", "4", "--text-heads", "4")
    assert read_clip_config(tmp_path / "out") == clip_preset("openai_b16", **SMALL)
