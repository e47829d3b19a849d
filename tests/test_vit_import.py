"""timm and Hugging Face ViTs into diffjax: logits against the real libraries' models on shared
random weights (float32 and float64), the file readers, position-embedding resampling, and
malformed checkpoints failing with the keys named.

The models are the libraries' own constructors at reduced width and depth (32 px images, patch 8,
width 32, 2 blocks, 4 heads): the same key layout as the released ``vit_*_patch16_224`` / DeiT /
``google/vit-*`` checkpoints at a size that runs in a second.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from diffjax.analysis import with_dtype  # noqa: E402
from diffjax.torch_weights import (  # noqa: E402
    ConversionError,
    read_safetensors,
    read_weights,
)
from diffjax.vit_import import (  # noqa: E402
    LIBRARY_STATS,
    convert_vit,
    infer_config,
    resample_pos_embed,
)

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def _randomise(model, seed=0):
    """Every parameter drawn anew (LayerNorm scales near 1), so no weight is at a special value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and ("norm" in name or "layernorm" in name):
                p.copy_(1 + 0.2 * r)
            else:
                p.copy_(r * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return model.eval()


def _state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _images(n=3, size=32, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3))


def _torch_logits(model, images, mean, std, dtype, hf=False):
    x = (images - np.asarray(mean)) / np.asarray(std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
    with torch.no_grad():
        out = model.to(dtype)(x)
    return (out.logits if hf else out).numpy()


def _max_diffs(model, config, ref, images, hf=False):
    """max |Δ logits| in float32 and float64 against ``ref`` (which is cast in place)."""
    got32 = np.asarray(nnx.jit(lambda m, x: m(x))(model, np.asarray(images, np.float32)))
    want32 = _torch_logits(ref, images, config.mean, config.std, torch.float32, hf)
    with jax.enable_x64():
        got64 = np.asarray(nnx.jit(lambda m, x: m(x))(with_dtype(model, "float64"), images))
    want64 = _torch_logits(ref, images, config.mean, config.std, torch.float64, hf)
    assert got64.dtype == np.float64
    return float(np.max(np.abs(got32 - want32))), float(np.max(np.abs(got64 - want64)))


TIMM_CASES = {
    # name: (timm model, extra kwargs, our overrides)
    "vit": ("vit_tiny_patch16_224", {}, {}),
    "vit_avg_prenorm_tanh": (
        "vit_tiny_patch16_224",
        dict(global_pool="avg", pre_norm=True, act_layer="gelu_tanh"),
        dict(activation="gelu_tanh"),
    ),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, {}),
}


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_logits_match(case):
    name, kwargs, overrides = TIMM_CASES[case]
    ref = _randomise(timm.create_model(name, pretrained=False, **TINY, **kwargs))
    state = _state(ref)
    config = infer_config(state, num_heads=4, **LIBRARY_STATS["timm"], **overrides)
    assert (config.ln_pre, config.pool, config.distillation) == (
        "pre_norm" in kwargs,
        "mean" if "global_pool" in kwargs else "cls",
        "distilled" in name,
    )
    model = convert_vit(state, config)
    d32, d64 = _max_diffs(model, config, ref, _images())
    # Logits are O(1): float32 agrees to rounding, float64 to ~1e-15.
    assert d32 < 2e-5 and d64 < 1e-12, (case, d32, d64)


HF_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


@pytest.mark.parametrize("hidden_act", sorted(HF_ACTS))
def test_huggingface_logits_match(hidden_act):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=5, hidden_act=hidden_act,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = _randomise(transformers.ViTForImageClassification(hf_config))
    state = _state(ref)
    config = infer_config(state, num_heads=4, activation=HF_ACTS[hidden_act], **LIBRARY_STATS["hf"])
    assert config.layer_norm_eps == 1e-12 and config.mean == (0.5, 0.5, 0.5)
    model = convert_vit(state, config)
    d32, d64 = _max_diffs(model, config, ref, _images(), hf=True)
    assert d32 < 2e-5 and d64 < 1e-12, (hidden_act, d32, d64)


@pytest.mark.parametrize("sizes", [(4, 6), (6, 4), (4, 4)])
def test_pos_embed_resampling_matches_torch_interpolate(sizes):
    old, new = sizes
    pos = np.random.default_rng(0).normal(size=(1, 2 + old * old, 3))
    grid = torch.from_numpy(pos[:, 2:].reshape(1, old, old, 3)).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", antialias=True)
    want = want.permute(0, 2, 3, 1).reshape(1, new * new, 3).numpy()
    got = resample_pos_embed(pos, 2, new)
    np.testing.assert_array_equal(got[:, :2], pos[:, :2])
    np.testing.assert_allclose(got[:, 2:], want, rtol=0, atol=1e-13)


def test_other_image_size_matches_timm_resampled_model():
    from timm.models.vision_transformer import checkpoint_filter_fn

    small = _randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    state = _state(small)
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, "img_size": 48})
    big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
    config = infer_config(state, num_heads=4, image_size=48, **LIBRARY_STATS["timm"])
    model = convert_vit(state, config)
    d32, d64 = _max_diffs(model, config, big.eval(), _images(size=48))
    # timm resamples in float32, we in float64 (then round to float32): float32-level agreement.
    assert d32 < 2e-5 and d64 < 1e-5, (d32, d64)


def test_weight_files_read_alike(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    ref = _randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    torch.save(sd, tmp_path / "model.pt")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    safetensors_torch.save_file(sd, tmp_path / "model.safetensors")
    want = _state(ref)
    for name in ("model.pt", "pytorch_model.bin", "model.safetensors"):
        got = read_weights(tmp_path / name)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # bfloat16 and float16 tensors, read by our parser against the package's own reader.
    mixed = {"b": torch.randn(3, 4).bfloat16(), "h": torch.randn(5).half(), "i": torch.arange(4)}
    safetensors_torch.save_file(mixed, tmp_path / "mixed.safetensors")
    got = read_safetensors(tmp_path / "mixed.safetensors")
    for k, v in safetensors_torch.load_file(tmp_path / "mixed.safetensors").items():
        np.testing.assert_array_equal(np.asarray(got[k], np.float64), v.double().numpy())


def test_bad_checkpoints_name_the_problem(tmp_path):
    ref = _randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY))
    state = _state(ref)
    config = infer_config(state, num_heads=4, **LIBRARY_STATS["timm"])
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.bias"}
    with pytest.raises(ConversionError, match=r"missing key.*blocks\.1\.attn\.qkv\.bias"):
        convert_vit(missing, config)
    scaled = timm.create_model("vit_tiny_patch16_224", pretrained=False, init_values=1e-5, **TINY)
    with pytest.raises(ConversionError, match=r"unexpected key.*blocks\.0\.ls1\.gamma"):
        convert_vit(_state(scaled), config)
    wrong = dict(state, **{"head.weight": state["head.weight"][:4]})
    with pytest.raises(ConversionError, match=r"wrong shape.*head\.weight: \(4, 32\)"):
        convert_vit(wrong, config)
    with pytest.raises(ConversionError, match="not a timm VisionTransformer"):
        infer_config({"foo.weight": np.zeros(3, np.float32)}, num_heads=4, **LIBRARY_STATS["timm"])
    with pytest.raises(ValueError, match="mean and std are not in the weights"):
        infer_config(state, num_heads=4)
    torch.save({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        read_weights(tmp_path / "half.pt")
    with pytest.raises(ConversionError, match="unknown weights format"):
        read_weights(tmp_path / "model.h5")
    (tmp_path / "short.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ConversionError, match="does not fit"):
        read_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{x")
    with pytest.raises(ConversionError, match="not JSON"):
        read_safetensors(tmp_path / "bad.safetensors")


class _TokenBatchNorm(torch.nn.BatchNorm1d):
    """BatchNorm over the features of [B, N, D] tokens (or of [B, D] pooled features): the
    verification-friendly ViT's norm layer, as a timm ``norm_layer``."""

    def forward(self, x):
        if x.ndim == 2:
            return super().forward(x)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_batchnorm_relu_vit_logits_match(pool):
    """A timm ViT with BatchNorm for every LayerNorm and ReLU MLPs (running statistics drawn
    away from 0 and 1) converts to norm='batchnorm', activation='relu'."""
    ref = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        **TINY,
        pre_norm=True,
        global_pool=pool,
        norm_layer=_TokenBatchNorm,
        act_layer="relu",
    )
    _randomise(ref, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.3 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + 1.5 * torch.rand(buf.shape, generator=g))
    state = _state(ref)
    assert "blocks.0.norm1.num_batches_tracked" in state
    config = infer_config(state, num_heads=4, activation="relu", layer_norm_eps=1e-5,
                          **LIBRARY_STATS["timm"])
    assert (config.norm, config.ln_pre, config.pool) == (
        "batchnorm",
        True,
        "mean" if pool == "avg" else "cls",
    )
    model = convert_vit(state, config)
    d32, d64 = _max_diffs(model, config, ref, _images())
    # ReLU and BatchNorm leave the logits larger than O(1) (here ~20) and float32 rounding
    # amplified (the two libraries reduce in different orders): relative to their size.
    size = np.abs(_torch_logits(ref, _images(), config.mean, config.std, torch.float64)).max()
    assert d32 < 1e-4 * size and d64 < 1e-13 * size, (d32, d64, size)
    # The running statistics are part of the strict key check.
    del state["blocks.1.norm2.running_var"]
    with pytest.raises(ConversionError, match="blocks.1.norm2.running_var"):
        convert_vit(state, config)
