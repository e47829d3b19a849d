"""EVA-02-style timm ViTs (timm ``Eva``) into diffjax: the 2-D rotary positions of the patch
grid (``rope_base``, ``rope_ref_grid``) against a float64 NumPy reference, and whole models
against timm through the command line (float32 ≤ 1e-5, float64 ≤ 1e-12 relative), with the
switches diffjax does not model refused by name.

timm computes its rotary table in float32 (frequencies, grid, sin and cos) and keeps it so in a
``.double()`` model; the float64 comparison gives timm's own table-building function the
frequencies in float64 (the only change), and the float32 table is checked separately against
ours to float32 rounding.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from timm.layers.pos_embed_sincos import build_rotary_pos_embed  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.analysis import with_dtype  # noqa: E402
from diffjax.attention import GridRotary, rotate_pairs  # noqa: E402
from diffjax.checkpoint import load_model  # noqa: E402
from diffjax.config import ViTConfig  # noqa: E402
from diffjax.torch_weights import ConversionError  # noqa: E402
from diffjax.vit_import import LIBRARY_STATS, infer_config  # noqa: E402
from tests.commandline import diffjax, diffjax_error  # noqa: E402
from tests.test_vit_import import _images, _randomise, _state, _torch_logits  # noqa: E402

# 28 px, patch 14 (a 2 × 2 grid), width 32, 2 blocks, 2 heads of dim 16, 5 classes.
TINY = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=5)
# name: (timm architecture, extra kwargs, what infer_config must read). The eva02_* defaults:
# q/v biases, packed SwiGLU (mlp_ratio 8/3), RoPE on a 16 × 16 reference grid, mean pooling.
FAMILIES = {
    "eva02_tiny": ("eva02_tiny_patch14_224", {}, dict(mlp_gate=True, mlp_norm=False)),
    # EVA-02 B/L: the SwiGLU with its inner LayerNorm (fc1_g, fc1_x, norm); here also unfused
    # q/k/v projections, LayerScale (gamma_1/2) and two register tokens.
    "eva02_scale_mlp": (
        "eva02_base_patch14_224",
        dict(qkv_fused=False, init_values=0.1, num_reg_tokens=2),
        dict(mlp_gate=True, mlp_norm=True, layer_scale=True, num_registers=2),
    ),
}


def _numpy_rotary(x, grid, prefix, base, ref_grid):
    """float64 reference of 2-D RoPE, one token and pair at a time: x [N, d]."""
    out = x.copy()
    d = x.shape[-1]
    nb = d // 4
    scale = 1.0 if ref_grid is None else ref_grid / grid
    for p in range(prefix, x.shape[0]):
        r, c = divmod(p - prefix, grid)
        for i in range(d // 2):
            pos = (r if i < nb else c) * scale
            a = pos * base ** (-(i % nb) / nb)
            e, o = x[p, 2 * i], x[p, 2 * i + 1]
            out[p, 2 * i] = e * np.cos(a) - o * np.sin(a)
            out[p, 2 * i + 1] = e * np.sin(a) + o * np.cos(a)
    return out


@pytest.mark.parametrize("ref_grid", [None, 16])
def test_grid_rotary_matches_reference(ref_grid):
    rot = GridRotary(grid=3, num_prefix=2, base=100.0, ref_grid=ref_grid)
    x = np.random.default_rng(0).normal(size=(11, 8))
    with jax.enable_x64():
        got = np.asarray(rotate_pairs(jnp.asarray(x), rot.angles(8, jnp.float64), 0))
    np.testing.assert_allclose(got, _numpy_rotary(x, 3, 2, 100.0, ref_grid), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(got[:2], x[:2])  # the prefix tokens untouched, exactly


def test_timm_float32_table_is_ours_rounded():
    """timm's cached [sin | cos] table (interleaved pairs) equals our angles to float32."""
    ref = timm.create_model("eva02_tiny_patch14_224", pretrained=False, **TINY)
    with jax.enable_x64():
        angles = np.asarray(GridRotary(2, 1, 10000.0, 16).angles(16, jnp.float64))[1:]
    table = ref.rope.pos_embed.numpy().astype(np.float64)
    want = np.repeat(angles, 2, axis=-1)
    np.testing.assert_allclose(table, np.concatenate([np.sin(want), np.cos(want)], -1),
                               rtol=0, atol=1e-6)  # fmt: skip


def exact_double(ref):
    """``ref`` cast to float64 in place, its rotary table rebuilt by timm with float64
    frequencies (see the module docstring)."""
    ref = ref.double()
    rope = ref.rope
    nb = rope.dim // 4
    bands = torch.from_numpy(float(rope.temperature) ** (-np.arange(nb) / nb))
    sin, cos = build_rotary_pos_embed(list(rope.feat_shape), bands=bands, in_pixels=False,
                                      ref_feat_shape=rope.ref_feat_shape,
                                      dtype=torch.float64)  # fmt: skip
    rope.pos_embed = torch.cat([sin, cos], -1)
    return ref


def eva_max_diffs(ref, model, images) -> tuple[float, float, float]:
    """max |Δ logits| of ``model`` against timm's Eva ``ref`` in float32 (timm as it is) and
    float64 (timm through :func:`exact_double`; ``ref`` is cast in place), and the largest
    |float64 logit|."""
    c = model.config
    want32 = _torch_logits(ref, images, c.mean, c.std, torch.float32)
    got32 = np.asarray(model(np.float32(images)))
    ref = exact_double(ref)
    x = (images - np.asarray(c.mean)) / np.asarray(c.std)
    with torch.no_grad():
        want64 = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    with jax.enable_x64():
        got64 = np.asarray(with_dtype(model, "float64")(images))
    return (float(np.abs(got32 - want32).max()), float(np.abs(got64 - want64).max()),
            float(np.abs(want64).max()))  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eva02_import_command_line(family, tmp_path, capsys):
    """timm's hub writer's files (model.safetensors, config.json with the architecture and the
    statistics) imported with no flag; float32 and float64 logits against timm."""
    name, kwargs, switches = FAMILIES[family]
    torch.manual_seed(0)
    ref = _randomise(timm.create_model(name, pretrained=False, **TINY, **kwargs))
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    weights = str(tmp_path / "hub" / "model.safetensors")
    diffjax("import-vit", weights, str(tmp_path / "out"))
    model = load_model(tmp_path / "out")
    c = model.config
    assert (c.rope_base, c.rope_ref_grid, c.pool, c.num_heads) == (10000.0, 16, "mean", 2)
    for field, value in switches.items():
        assert getattr(c, field) == value, (field, getattr(c, field))
    d32, d64, scale = eva_max_diffs(ref, model, _images(size=28))
    assert d32 / scale < 1e-5 and d64 / scale < 1e-12, (d32, d64, scale)
    # A flag that contradicts the architecture's rotary grid is refused.
    err = diffjax_error(capsys, "import-vit", weights, str(tmp_path / "x"), "--rope-ref-grid", "8")
    assert "rope_ref_grid: flag 8, file 16" in err


def test_eva_without_its_rotary_settings_or_with_unmodelled_parts_is_refused(tmp_path, capsys):
    ref = _randomise(timm.models.eva.Eva(**TINY, use_rot_pos_emb=True))
    state = _state(ref)
    with pytest.raises(ConversionError, match="give rope_base"):
        infer_config(state, num_heads=2, **LIBRARY_STATS["timm"])
    config = infer_config(state, num_heads=2, rope_base=1e4, **LIBRARY_STATS["timm"])
    assert (config.rope_base, config.rope_ref_grid) == (1e4, None)
    inner = _randomise(timm.models.eva.Eva(**TINY, scale_attn_inner=True))
    with pytest.raises(ConversionError, match="scale_attn_inner"):
        infer_config(_state(inner), num_heads=2, rope_base=None, **LIBRARY_STATS["timm"])
    # A hub config of another Eva-class architecture (its grid is laid out otherwise).
    hub = timm.create_model("eva02_tiny_patch14_224", pretrained=False, **TINY)
    save_for_hf(hub, tmp_path / "hub", safe_serialization=True)
    cfg = tmp_path / "hub" / "config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"architecture": "vit_pe_core_base"}))
    weights = str(tmp_path / "hub" / "model.safetensors")
    err = diffjax_error(capsys, "import-vit", weights, str(tmp_path / "y"), "--num-heads", "2")
    assert "rotary layout diffjax does not model" in err


@pytest.mark.parametrize(
    "name, kwargs, marker",
    [
        ("eva02_tiny_patch14_224", {}, "blocks.0.attn.q_bias"),
        ("eva02_base_patch14_224", {}, "blocks.0.attn.k_proj.weight"),
        # qkv_bias=False with a packed SwiGLU: the keys of a plain gated ViT (no marker)
        ("eva02_small_patch14_224", dict(qkv_bias=False), None),
    ],
)
def test_eva_rotary_settings_come_from_the_hub_config_or_flags(name, kwargs, marker, tmp_path,
                                                               capsys):  # fmt: skip
    """RoPE holds no weights: the hub config's architecture gives it (even to weights that look
    like a plain gated ViT's); without the config, EVA-only keys and no flag are refused in
    one line."""
    ref = timm.create_model(name, pretrained=False, img_size=28, depth=1, embed_dim=32,
                            num_heads=4, num_classes=5, **kwargs)  # fmt: skip
    save_for_hf(ref, tmp_path / "hub")
    argv = ["import-vit", str(tmp_path / "hub" / "pytorch_model.bin")]
    diffjax(*argv, str(tmp_path / "out"))
    c = load_model(tmp_path / "out").config
    assert (c.rope_base, c.rope_ref_grid, c.qkv_bias) == (1e4, 16, "qkv_bias" not in kwargs)
    if marker is not None:
        (tmp_path / "hub" / "config.json").unlink()
        err = diffjax_error(capsys, *argv, str(tmp_path / "x"), "--assume-imagenet-stats",
                            "--num-heads", "4")  # fmt: skip
        last = err.splitlines()[-1]  # after the reader's progress bar
        assert last.startswith("diffjax import-vit: error: a timm EVA ViT: its rotary positions")


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(rope_ref_grid=16), "needs rope_base"),
        (dict(rope_base=1.0), "rope_base"),
        (dict(rope_base=1e4, rope_ref_grid=0), "rope_ref_grid"),
        (dict(rope_base=1e4, width=24, num_heads=4), "head dim divisible by 4"),
        (dict(rope_base=1e4, attention="diff"), "Differential Attention has none"),
        (dict(mlp_norm=True, norm="batchnorm"), "mlp_norm"),
        (dict(mlp_norm=1), "mlp_norm must be True or False"),
    ],
)
def test_bad_eva_switches_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**changes)


def test_eva_switches_leave_saved_configs_unchanged():
    assert not {"rope_base", "rope_ref_grid", "mlp_norm"} & set(ViTConfig().to_dict())
    used = ViTConfig(width=32, num_heads=2, rope_base=1e4, rope_ref_grid=16, mlp_norm=True)
    assert ViTConfig(**used.to_dict()) == used


def test_import_eva02_by_flags_then_analyse(tmp_path):
    """The bare weights (no config.json) imported with the rotary settings as flags;
    ``diffjax analyse``'s logits equal timm's float64 ones and its per-row cosines torch
    autograd's of timm's attention maps, to 1e-12."""
    from safetensors.torch import save_file

    from tests.test_vit_import_families import check_analysis

    torch.manual_seed(0)
    ref = _randomise(timm.create_model("eva02_tiny_patch14_224", pretrained=False,
                                       **{**TINY, "img_size": 32, "patch_size": 16}))  # fmt: skip
    save_file(ref.state_dict(), tmp_path / "model.safetensors")
    out = tmp_path / "eva"
    stats = ["--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.25", "0.3"]
    diffjax("import-vit", str(tmp_path / "model.safetensors"), str(out), "--num-heads", "2",
            "--rope-base", "10000", "--rope-ref-grid", "16", *stats)  # fmt: skip
    c = load_model(out).config
    assert (c.rope_base, c.rope_ref_grid, c.num_tokens) == (10000.0, 16, 5)
    diffjax(
        "analyse", f"--config.checkpoint={out}", "--config.dataset=synthetic",
        "--config.num_examples=1", "--config.batch_size=1", "--config.samples=4",
        "--config.skip=depth,empirical,lipschitz", "--workdir", str(tmp_path / "an"),
    )  # fmt: skip
    check_analysis(tmp_path / "an", exact_double(ref), c)


def test_fused_attention_turns_the_same_grid():
    """The fused formulation ([B, N, H, d] layout) rotates as the reference path does."""
    config = dj.preset("tiny", rope_base=100.0, rope_ref_grid=4, mlp_norm=True, mlp_gate=True,
                       activation="silu")  # fmt: skip
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    want = dj.ViT(config, rngs=nnx.Rngs(0))(x)
    got = dj.ViT(config.replace(attention_impl="fused_xla"), rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    plain = dj.ViT(config.replace(rope_base=None, rope_ref_grid=None), rngs=nnx.Rngs(0))(x)
    assert np.abs(np.asarray(plain) - np.asarray(want)).max() > 1e-4  # the rotation acts
