"""Hugging Face ``SiglipVisionModel`` into a diffjax ViT (no class token, the attention-pool head
as transformers writes it): its pooled output against transformers on the same random weights,
float32 (1e-5 relative) and float64 (1e-12), from the file ``save_pretrained`` writes and from
the ``vision_model.``-prefixed names of transformers < 5; through ``diffjax import-vit`` with the
config files beside the weights; what it does not model refused.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from diffjax.analysis import with_dtype  # noqa: E402
from diffjax.checkpoint import load_model  # noqa: E402
from diffjax.torch_weights import ConversionError, read_weights  # noqa: E402
from diffjax.vit_import import LIBRARY_STATS, convert_vit, infer_config  # noqa: E402
from tests.commandline import diffjax  # noqa: E402
from tests.test_vit_import import _images, _randomise  # noqa: E402

SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             image_size=28, patch_size=14)  # fmt: skip


def _reference(**changes):
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(**SIZES, **changes)
    return _randomise(transformers.SiglipVisionModel(config))


def _pooled(ref, images, mean, std, dtype):
    x = (images - np.asarray(mean)) / np.asarray(std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
    with torch.no_grad():
        return ref.to(dtype)(pixel_values=x).pooler_output.numpy()


def _check(model, ref, images):
    c = model.config
    want32 = _pooled(ref, images, c.mean, c.std, torch.float32)
    want64 = _pooled(ref, images, c.mean, c.std, torch.float64)
    got32 = np.asarray(nnx.jit(lambda m, x: m(x))(model, np.float32(images)))
    with jax.enable_x64():
        got64 = np.asarray(nnx.jit(lambda m, x: m(x))(with_dtype(model, "float64"), images))
    scale = float(np.abs(want64).max())
    assert np.abs(got32 - want32).max() / scale < 1e-5
    assert np.abs(got64 - want64).max() / scale < 1e-12


@pytest.mark.parametrize("prefix", ["", "vision_model."])
def test_huggingface_siglip_matches(prefix, tmp_path):
    ref = _reference()
    ref.save_pretrained(tmp_path)
    state = {prefix + k: v for k, v in read_weights(tmp_path / "model.safetensors").items()}
    config = infer_config(state, num_heads=4, **LIBRARY_STATS["hf_siglip"])
    assert (config.class_token, config.pool, config.num_classes) == (False, "map", 0)
    assert (config.activation, config.layer_norm_eps, config.patch_bias) == (
        "gelu_tanh", 1e-6, True,
    )  # fmt: skip
    _check(convert_vit(state, config), ref, _images(size=28))


def test_import_huggingface_siglip_command_line(tmp_path):
    """save_pretrained's files and the image processor's: heads, eps, activation and the
    statistics all read from them."""
    ref = _reference(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-5)
    ref.save_pretrained(tmp_path / "hf")
    processor = transformers.SiglipImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.3] * 3)
    processor.save_pretrained(tmp_path / "hf")
    record = diffjax("import-vit", str(tmp_path / "hf" / "model.safetensors"),
                     str(tmp_path / "out"))  # fmt: skip
    assert record["layout"] == "hf_siglip" and record["statistics"] == "config files"
    model = load_model(tmp_path / "out")
    c = model.config
    assert (c.num_heads, c.layer_norm_eps, c.mean, c.std) == (4, 1e-5, (0.4, 0.5, 0.6),
                                                              (0.3, 0.3, 0.3))  # fmt: skip
    _check(model, ref, _images(size=28))


def test_what_siglip_import_does_not_model_is_refused(tmp_path):
    headless = {k: v.detach().numpy() for k, v in _reference(vision_use_head=False)
                .state_dict().items()}  # fmt: skip
    with pytest.raises(ConversionError, match="vision_use_head=False"):
        infer_config(headless, num_heads=4, **LIBRARY_STATS["hf_siglip"])
    both = {"vision_model." + k: v.detach().numpy()
            for k, v in _reference().state_dict().items()}  # fmt: skip
    both["text_model.embeddings.token_embedding.weight"] = np.zeros((8, 32), np.float32)
    with pytest.raises(ConversionError, match="image and text towers"):
        infer_config(both, num_heads=4, **LIBRARY_STATS["hf_siglip"])
