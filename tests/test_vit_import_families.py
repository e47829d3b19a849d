"""DINOv2, SigLIP-style and other modern ViTs into diffjax: each new ``ViTConfig`` switch against
the real libraries on shared random weights (float32 and float64), through the files the
libraries write themselves and the command line; ``diffjax analyse`` on an imported DINOv2 with
registers against timm's float64 forward pass and torch autograd of its attention maps.

Switches and the families that need them: LayerScale (``layer_scale``: DINOv2, DeiT-III),
register tokens and position rows for the patches only (``num_registers``,
``pos_embed_prefix=False``: ``*_reg4_dinov2``), no class token with the attention-pool head
(``class_token=False``, ``pool="map"``: SigLIP), headless backbones (``num_classes=0``), qkv
without bias (``qkv_bias=False`` with ``proj_bias=True``), qk-norm, and the SwiGLU MLP
(``mlp_gate``, ``activation="silu"``: DINOv2-g, Hugging Face ``use_swiglu_ffn``).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from diffjax.analysis import with_dtype  # noqa: E402
from diffjax.checkpoint import load_model  # noqa: E402
from diffjax.config import ViTConfig  # noqa: E402
from diffjax.data import load_dataset  # noqa: E402
from diffjax.torch_weights import ConversionError, read_weights  # noqa: E402
from diffjax.vit_import import LIBRARY_STATS, convert_vit, infer_config  # noqa: E402
from tests.commandline import diffjax, diffjax_error  # noqa: E402
from tests.test_vit_import import _images, _max_diffs, _randomise, _state  # noqa: E402

# The released layouts at 28 px, patch 14 (a 2 × 2 grid), width 32, 2 blocks, 4 heads.
TINY = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4, num_classes=5)
# name: (timm model, extra kwargs, our overrides, the switches infer_config must read)
TIMM_FAMILIES = {
    "dinov2": ("vit_small_patch14_dinov2", {}, {}, dict(layer_scale=True)),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {}, {},
                    dict(layer_scale=True, num_registers=4, pos_embed_prefix=False)),
    "dinov2_headless": ("vit_small_patch14_dinov2", dict(num_classes=0), {},
                        dict(num_classes=0)),
    "dinov2_g_swiglu": ("vit_giant_patch14_dinov2", dict(mlp_ratio=2.66667 * 2), {},
                        dict(mlp_gate=True, activation="silu", mlp_ratio=85 / 32)),
    "siglip_map": ("vit_base_patch16_siglip_224", dict(act_layer="gelu_tanh"),
                   dict(activation="gelu_tanh"), dict(class_token=False, pool="map")),
    "qk_norm_no_qkv_bias": ("vit_small_patch14_dinov2", dict(qkv_bias=False, qk_norm=True), {},
                            dict(qk_norm=True, qkv_bias=False, proj_bias=True)),
}  # fmt: skip


def _relative(d: tuple[float, float], scale: float) -> tuple[float, float]:
    return d[0] / scale, d[1] / scale


@pytest.mark.parametrize("family", sorted(TIMM_FAMILIES))
def test_timm_family_matches(family):
    name, kwargs, overrides, switches = TIMM_FAMILIES[family]
    ref = _randomise(timm.create_model(name, pretrained=False, **{**TINY, **kwargs}))
    state = _state(ref)
    config = infer_config(state, num_heads=4, **LIBRARY_STATS["timm"], **overrides)
    for field, value in switches.items():
        assert getattr(config, field) == value, (field, getattr(config, field))
    images = _images(size=28)
    with torch.no_grad():
        x = (images - np.asarray(config.mean)) / np.asarray(config.std)
        out = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).float()).numpy()
    scale = float(np.abs(out).max())
    d32, d64 = _relative(_max_diffs(convert_vit(state, config), config, ref, images), scale)
    assert d32 < 1e-5 and d64 < 1e-12, (family, d32, d64)


def _dinov2_reference(swiglu: bool):
    transformers = pytest.importorskip("transformers")
    hf = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=28, patch_size=14, use_swiglu_ffn=swiglu)  # fmt: skip
    torch.manual_seed(0)
    return _randomise(transformers.Dinov2Model(hf))


def _pooler(ref, images, mean, std, dtype):
    x = (images - np.asarray(mean)) / np.asarray(std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
    with torch.no_grad():
        return ref.to(dtype)(x).pooler_output.numpy()


@pytest.mark.parametrize("swiglu", [False, True])
def test_huggingface_dinov2_matches(swiglu, tmp_path):
    """Dinov2Model's pooler output (LN(h_L)[CLS]), read from the file save_pretrained writes
    (the released names) and from transformers' in-memory names alike."""
    ref = _dinov2_reference(swiglu)
    ref.save_pretrained(tmp_path)
    saved = read_weights(tmp_path / "model.safetensors")
    assert "encoder.layer.0.attention.attention.query.weight" in saved
    memory = _state(ref)
    config = infer_config(saved, num_heads=4, **LIBRARY_STATS["hf_dinov2"])
    assert config == infer_config(memory, num_heads=4, **LIBRARY_STATS["hf_dinov2"])
    assert (config.layer_scale, config.num_classes, config.mlp_gate) == (True, 0, swiglu)
    images = _images(size=28)
    want32 = _pooler(ref, images, config.mean, config.std, torch.float32)
    want64 = _pooler(ref, images, config.mean, config.std, torch.float64)
    scale = float(np.abs(want64).max())
    for state in (saved, memory):
        model = convert_vit(state, config)
        got32 = np.asarray(nnx.jit(lambda m, x: m(x))(model, np.float32(images)))
        with jax.enable_x64():
            got64 = np.asarray(nnx.jit(lambda m, x: m(x))(with_dtype(model, "float64"), images))
        assert np.abs(got32 - want32).max() / scale < 1e-5
        assert np.abs(got64 - want64).max() / scale < 1e-12


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(class_token=False), "pool='cls' reads the class token"),
        (dict(num_registers=-1), "num_registers"),
        (dict(num_classes=-1), "num_classes"),
        (dict(pos_embed_prefix=False, class_token=False, pool="mean"), "there are none"),
        (dict(distillation=True, num_registers=2), "no register tokens"),
        (dict(distillation=True, num_classes=0), "num_classes >= 1"),
        (dict(attention="diff", qk_norm=True), "Differential Attention has neither"),
        (dict(proj_bias=1), "proj_bias must be True or False"),
        (dict(layer_scale="yes"), "layer_scale must be True or False"),
        (dict(pool="max"), "pool must be one of"),
    ],
)
def test_bad_switches_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**changes)


def test_new_switches_leave_saved_configs_unchanged():
    """The new fields appear in a config's dict only when used, so config.json files and run
    hashes written before them are unchanged, and such a file loads back."""
    default = ViTConfig()
    d = default.to_dict()
    assert not {"class_token", "num_registers", "layer_scale", "qk_norm", "proj_bias",
                "mlp_gate", "pos_embed_prefix"} & set(d)  # fmt: skip
    assert ViTConfig(**d) == default
    used = ViTConfig(num_registers=2, layer_scale=True, pos_embed_prefix=False)
    assert {"num_registers": 2, "layer_scale": True, "pos_embed_prefix": False}.items() <= (
        used.to_dict().items()
    )


def test_ambiguous_or_unmodelled_layouts_are_refused():
    ref = _randomise(timm.create_model("vit_small_patch14_dinov2", pretrained=False,
                                       **{**TINY, "class_token": False, "global_pool": "avg",
                                          "fc_norm": False}))  # fmt: skip
    with pytest.raises(ConversionError, match="neither"):
        infer_config(_state(ref), num_heads=4, **LIBRARY_STATS["timm"])
    # 4 registers on a 3 × 3 grid: 9 rows are a grid without the prefix, 9 − 5 = 4 one with it.
    ref = _randomise(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False,
                                       **{**TINY, "img_size": 42}))  # fmt: skip
    with pytest.raises(ConversionError, match="say which with pos_embed_prefix"):
        infer_config(_state(ref), num_heads=4, **LIBRARY_STATS["timm"])
    config = infer_config(_state(ref), num_heads=4, pos_embed_prefix=False,
                          **LIBRARY_STATS["timm"])  # fmt: skip
    assert config.num_patches == 9 and config.num_registers == 4


def _attention_probs(ref, layer: int):
    """timm's softmax map of block ``layer`` as the input of its attn_drop (eager attention)."""
    captured = {}
    attn = ref.blocks[layer].attn
    attn.fused_attn = False
    attn.attn_drop.register_forward_hook(lambda m, args, out: captured.update(a=args[0]))
    return captured


def _torch_cosines(ref, image, mean, std, layer: int) -> np.ndarray:
    """cos θ between the Jacobians (w.r.t. the pixels) of heads 2h and 2h+1 of block ``layer``,
    per pair and query row: [H/2, N], by torch autograd in float64."""
    captured = _attention_probs(ref, layer)
    mean_t = torch.tensor(mean, dtype=torch.float64)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float64)[:, None, None]

    def maps(x):
        ref((x - mean_t)[None] / std_t)
        return captured["a"][0]  # [H, N, N]

    x = torch.from_numpy(image.transpose(2, 0, 1).copy())
    jac = torch.autograd.functional.jacobian(maps, x).numpy()  # [H, N, N, C, H, W]
    jac = jac.reshape(*jac.shape[:2], -1)  # per head and row: keys × pixels flattened
    even, odd = jac[0::2], jac[1::2]
    g12 = np.sum(even * odd, -1)
    return g12 / np.sqrt(np.sum(even**2, -1) * np.sum(odd**2, -1))


def test_import_dinov2_with_registers_then_analyse(tmp_path):
    """A headless DINOv2 with registers, saved by timm's own hub writer (model.safetensors and
    config.json with heads and statistics), imported by the command line with no flag;
    ``diffjax analyse``'s features equal timm's float64 output and its per-row cosines equal
    torch autograd's to 1e-12."""
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    ref = _randomise(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False,
                                       img_size=32, patch_size=16, embed_dim=16, depth=2,
                                       num_heads=2, num_classes=0))  # fmt: skip
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    out = tmp_path / "dinov2"
    record = diffjax("import-vit", str(tmp_path / "hub" / "model.safetensors"), str(out))
    c = load_model(out).config
    assert record["layout"] == "timm" and record["model_config"]
    assert (c.num_heads, c.num_registers, c.num_classes, c.mean) == (
        2, 4, 0, tuple(timm.data.IMAGENET_DEFAULT_MEAN),
    )  # fmt: skip
    summary = diffjax(
        "analyse", f"--config.checkpoint={out}", "--config.dataset=synthetic",
        "--config.num_examples=1", "--config.batch_size=1", "--config.samples=4",
        "--config.skip=depth,empirical,lipschitz",
        "--workdir", str(tmp_path / "an"),
    )  # fmt: skip
    assert summary["accuracy"] is None  # features, not class scores
    rec = check_analysis(tmp_path / "an", ref.double(), c)
    assert rec["prediction"] is None


def check_analysis(workdir, ref, c: ViTConfig) -> dict:
    """The first example of ``diffjax analyse``'s ``workdir`` (synthetic data) against the
    float64 timm model ``ref``: logits (or features) to 1e-12 relative, each layer's per-row
    cosines to torch autograd's to 1e-12. Returns the example's record."""
    images = load_dataset("synthetic", "test").images[:1].astype(np.float64) / 255.0
    x = (images - np.asarray(c.mean)) / np.asarray(c.std)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    rec = json.loads((workdir / "examples" / "000000.json").read_text())
    np.testing.assert_allclose(rec["logits"], want[0], rtol=1e-12, atol=0)
    for layer in range(c.depth):
        cos = _torch_cosines(ref, images[0], c.mean, c.std, layer)
        got = np.asarray(rec["layers"][layer]["cos"], np.float64)
        assert got.shape == cos.shape == (1, c.num_tokens)
        np.testing.assert_allclose(got, cos, rtol=0, atol=1e-12)
    return rec


def test_row_cls_needs_a_class_token():
    from diffjax.experiments.analyse import _parse_row

    assert _parse_row("cls", 9, class_token=True) == 0
    with pytest.raises(ValueError, match="row 'cls': the model has no class token"):
        _parse_row("cls", 9, class_token=False)


def test_import_huggingface_dinov2_command_line(tmp_path, capsys):
    """Dinov2Model.save_pretrained's files plus the preprocessor config: everything the import
    needs (heads, eps, statistics) read from them; a contradicting flag refused."""
    transformers = pytest.importorskip("transformers")
    ref = _dinov2_reference(swiglu=True)
    ref.save_pretrained(tmp_path / "hf")
    processor = transformers.BitImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2] * 3)
    processor.save_pretrained(tmp_path / "hf")
    weights = str(tmp_path / "hf" / "model.safetensors")
    record = diffjax("import-vit", weights, str(tmp_path / "out"))
    c = load_model(tmp_path / "out").config
    assert record["layout"] == "hf_dinov2"
    assert (c.num_heads, c.activation, c.mlp_gate, c.mean, c.std) == (
        4, "silu", True, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2),
    )  # fmt: skip
    images = _images(size=28)
    want = _pooler(ref, images, c.mean, c.std, torch.float64)
    with jax.enable_x64():
        got = np.asarray(with_dtype(load_model(tmp_path / "out"), "float64")(images))
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-12
    err = diffjax_error(capsys, "import-vit", weights, str(tmp_path / "x"), "--num-heads", "2")
    assert "num_heads: flag 2, file 4" in err
