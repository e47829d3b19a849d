"""Hugging Face ``CLIPModel`` into diffjax through ``diffjax convert-clip``: the files
``save_pretrained`` and ``CLIPImageProcessor.save_pretrained`` write (config.json says every
size, head count, activation and eps; preprocessor_config.json the statistics), both towers'
projected features and the logit-scaled similarities against transformers' own, float32 and
float64."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

from diffjax.analysis import with_dtype  # noqa: E402
from diffjax.clip.checkpoint import load_clip  # noqa: E402
from diffjax.clip.convert import ConversionError, drop_position_ids  # noqa: E402
from tests.commandline import diffjax, diffjax_error  # noqa: E402
from tests.test_clip_openclip import _features, _tokens  # noqa: E402
from tests.test_vit_import import _randomise  # noqa: E402


def _reference(text_act: str, vision_act: str):
    text = transformers.CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, hidden_act=text_act)  # fmt: skip
    vision = transformers.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=128,
                                           image_size=32, patch_size=16,
                                           hidden_act=vision_act)  # fmt: skip
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    ref = _randomise(transformers.CLIPModel(config))
    with torch.no_grad():  # LayerNorm scales near 1 (the HF names hold no "norm")
        for name, p in ref.named_parameters():
            if name.endswith(("layer_norm1.weight", "layer_norm2.weight", "layrnorm.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape))
    return ref


def _hf_features(ref, images, tokens, mean, std, dtype):
    x = (images - np.asarray(mean)) / np.asarray(std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
    ref = ref.to(dtype)
    with torch.no_grad():
        img = ref.get_image_features(pixel_values=x)
        txt = ref.get_text_features(input_ids=torch.from_numpy(tokens))
        logits = ref(input_ids=torch.from_numpy(tokens), pixel_values=x).logits_per_image
    pooled = [getattr(t, "pooler_output", t) for t in (img, txt)]
    return [t.numpy() for t in (*pooled, logits)]


def test_convert_clip_huggingface_matches(tmp_path, capsys):
    """OpenAI's checkpoints use QuickGELU in both towers, later ones (e.g. LAION's HF ports)
    GELU: one tower of each."""
    ref = _reference("quick_gelu", "gelu")
    ref.save_pretrained(tmp_path / "hf")
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    transformers.CLIPImageProcessor(image_mean=mean, image_std=std).save_pretrained(tmp_path / "hf")
    weights = str(tmp_path / "hf" / "model.safetensors")
    record = diffjax("convert-clip", weights, str(tmp_path / "out"))
    assert record["layout"] == "hf" and record["preset"] == "hf"
    model = load_clip(tmp_path / "out")
    c = model.config
    assert (c.vision_activation, c.text_activation, c.vision_heads, c.text_heads, c.mean) == (
        "gelu", "quick_gelu", 4, 4, tuple(mean),
    )  # fmt: skip
    images = np.random.default_rng(1).uniform(size=(2, 32, 32, 3))
    tokens = _tokens()
    want32 = _hf_features(ref, images, tokens, mean, std, torch.float32)
    want64 = _hf_features(ref, images, tokens, mean, std, torch.float64)
    got32 = [*_features(model, images.astype(np.float32), tokens),
             np.asarray(model(images.astype(np.float32), tokens.astype(np.int32)))]  # fmt: skip
    with jax.enable_x64():
        m64 = with_dtype(model, "float64")
        got64 = [*_features(m64, images, tokens), np.asarray(m64(images, tokens.astype(np.int32)))]
    for g32, w32, g64, w64 in zip(got32, want32, got64, want64, strict=True):
        scale = np.abs(w64).max()
        assert np.abs(g32 - w32).max() / scale < 1e-5
        assert np.abs(g64 - w64).max() / scale < 1e-12
    # What the command refuses: a preset for a self-describing checkpoint, a missing processor.
    err = diffjax_error(capsys, "convert-clip", weights, str(tmp_path / "x"), "--preset",
                        "openai_b16")  # fmt: skip
    assert "config.json says the architecture" in err
    (tmp_path / "hf" / "preprocessor_config.json").unlink()
    err = diffjax_error(capsys, "convert-clip", weights, str(tmp_path / "y"))
    assert "image_mean/image_std" in err
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "clip"


def test_position_ids_buffers_are_checked_and_dropped():
    state = {"text_model.embeddings.position_ids": np.arange(77)[None], "x": np.zeros(1)}
    assert set(drop_position_ids(state)) == {"x"}
    with pytest.raises(ConversionError, match="not 0..76"):
        drop_position_ids({"text_model.embeddings.position_ids": np.arange(77)[::-1][None]})
