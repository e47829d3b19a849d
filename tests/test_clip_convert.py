"""Checkpoint conversion: a PyTorch reference of both releases, saved in their format, converted
without torch, must give the same image and text embeddings; malformed checkpoints must fail loudly.

The reference below is written from the DiffCLIP paper (arXiv 2503.06626) and docs/clip.md in
plain PyTorch (timm-style ViT with fused qkv or DiffCLIP's DiffAttention; an OpenAI-style text
transformer with ``nn.MultiheadAttention`` or DiffAttention), evaluated in float64.
"""

import argparse
import hashlib
import json
import math
import pathlib
import zipfile
from collections import OrderedDict

import jax
import numpy as np
import pytest

from diffjax import torch_weights
from diffjax.checkpoint import CheckpointError, save_model
from diffjax.clip import convert
from diffjax.clip.checkpoint import load_clip
from diffjax.clip.config import clip_preset
from diffjax.clip.convert import ConversionError, convert_checkpoint, read_state_dict

torch = pytest.importorskip("torch")
nn = torch.nn

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class DiffAttention(nn.Module):
    """DiffCLIP's DiffAttention (docs/definitions.md, with DiffCLIP's λ_init = 0.8), batch-first."""

    def __init__(self, dim, num_heads, lambda_init=0.8):
        super().__init__()
        self.h, self.d, self.lambda_init = num_heads // 2, dim // num_heads, lambda_init
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, nn.Parameter(torch.randn(self.d) * 0.1))
        self.diff_norm = RMSNorm(2 * self.d)

    def forward(self, x, mask=None):
        b, n, _ = x.shape
        h, d = self.h, self.d
        q = self.q_proj(x).view(b, n, 2 * h, d).transpose(1, 2) * d**-0.5
        k = self.k_proj(x).view(b, n, 2 * h, d).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, 2 * d).transpose(1, 2)
        s = q @ k.transpose(-1, -2)
        if mask is not None:
            s = s + mask
        p = s.softmax(-1).view(b, h, 2, n, n)
        lam = (
            torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1))
            - torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2))
            + self.lambda_init
        )
        o = (p[:, :, 0] - lam * p[:, :, 1]) @ v
        o = self.diff_norm(o) * (1 - self.lambda_init)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, 2 * h * d))


class TimmAttention(nn.Module):
    """timm ViT attention: one fused qkv Linear, rows [q; k; v], heads contiguous."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.h = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q * (c // self.h) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class VisionBlock(nn.Module):
    def __init__(self, dim, heads, diff, eps):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = DiffAttention(dim, heads) if diff else TimmAttention(dim, heads)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class Visual(nn.Module):
    """timm VisionTransformer(num_classes=0, global_pool='token') trunk."""

    def __init__(self, c, diff):
        super().__init__()
        w, p = c.vision_width, c.patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, w, p, p)
        self.cls_token = nn.Parameter(torch.randn(1, 1, w))
        self.pos_embed = nn.Parameter(torch.randn(1, (c.image_size // p) ** 2 + 1, w))
        eps = c.vision_ln_eps
        self.blocks = nn.ModuleList(
            VisionBlock(w, c.vision_heads, diff, eps) for _ in range(c.vision_layers)
        )
        self.norm = nn.LayerNorm(w, eps=eps)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualBlock(nn.Module):
    """OpenAI CLIP text block; (L, N, E) layout with nn.MultiheadAttention for the baseline."""

    def __init__(self, width, heads, diff):
        super().__init__()
        self.diff = diff
        self.attn = DiffAttention(width, heads) if diff else nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width),
                gelu=QuickGELU(),
                c_proj=nn.Linear(4 * width, width),
            )
        )

    def forward(self, x, mask):
        y = self.ln_1(x)
        if self.diff:
            a = self.attn(y.permute(1, 0, 2), mask).permute(1, 0, 2)
        else:
            a = self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + a
        return x + self.mlp(self.ln_2(x))


class RefCLIP(nn.Module):
    def __init__(self, c):
        super().__init__()
        diff = c.attention == "diff"
        self.visual = Visual(c, diff)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualBlock(c.text_width, c.text_heads, diff) for _ in range(c.text_layers)
        )
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(c.context_length, c.text_width))
        self.ln_final = nn.LayerNorm(c.text_width)
        self.image_projection = nn.Parameter(torch.randn(c.vision_width, c.embed_dim))
        self.text_projection = nn.Parameter(torch.randn(c.text_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        n = c.context_length
        self.mask = torch.full((n, n), float("-inf")).triu(1)

    def encode_image(self, images01):  # NHWC in [0, 1]
        x = (images01.permute(0, 3, 1, 2) - MEAN) / STD
        return self.visual(x) @ self.image_projection

    def encode_text(self, tokens):
        x = (self.token_embedding(tokens) + self.positional_embedding).permute(1, 0, 2)
        for blk in self.transformer.resblocks:
            x = blk(x, self.mask.to(x.dtype))
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ self.text_projection


CONFIGS = {
    "softmax": clip_preset("tiny", context_length=8, vocab_size=50, vision_ln_eps=1e-6),
    "diff": clip_preset("tiny_diff", context_length=8, vocab_size=50),
}


def _reference(attention, seed=0, config=None):
    torch.manual_seed(seed)
    ref = RefCLIP(config or CONFIGS[attention])
    with torch.no_grad():  # O(1) random weights so every parameter moves the outputs
        for name, p in ref.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "ln_1.weight", "ln_2.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "lambda_" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif name == "logit_scale":
                p.fill_(3.25)
            else:
                p.copy_(torch.randn_like(p) * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return ref


def _save_release(ref, path, wrap=True, prefix="module."):
    """torch.save in the SLIP / SynthCLIP training-checkpoint layout."""
    state = OrderedDict((prefix + k, v) for k, v in ref.state_dict().items())
    if wrap:
        obj = {
            "epoch": 3,
            "state_dict": state,
            "optimizer": {"state": {0: {"exp_avg": torch.ones(7)}}, "param_groups": [{"lr": 1.0}]},
            "scaler": {"scale": 65536.0},
            "best_acc1": np.float64(12.5),
            "args": argparse.Namespace(output_dir=pathlib.PurePosixPath("/x"), lr=5e-4),
        }
    else:
        obj = state
    torch.save(obj, path)
    return state


def _tokens(config, n, seed):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, config.context_length), np.int64)
    for row in range(n):  # random body, EOT (largest id) at a random position, zero padding
        length = rng.integers(1, config.context_length)
        tokens[row, :length] = rng.integers(1, config.vocab_size - 1, length)
        tokens[row, length] = config.vocab_size - 1
    return tokens


def _rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_converted_embeddings_match_pytorch(attention, tmp_path):
    config = CONFIGS[attention]
    ref = _reference(attention)
    _save_release(ref, tmp_path / "checkpoint_best.pt")
    model = convert_checkpoint(tmp_path / "checkpoint_best.pt", config)

    images = np.random.default_rng(1).uniform(size=(3, 16, 16, 3))
    tokens = _tokens(config, 4, seed=2)
    ref = ref.double()
    with torch.no_grad():
        want_img = ref.encode_image(torch.from_numpy(images)).numpy()
        want_txt = ref.encode_text(torch.from_numpy(tokens)).numpy()
    got_img = model.encode_image(jax.numpy.asarray(images, "float32"))
    got_txt = model.encode_text(jax.numpy.asarray(tokens, "int32"))
    # Required: 1e-5. Observed ~3e-7; 2e-6 also catches a 1e-6 ↔ 1e-5 LayerNorm-eps mix-up.
    assert _rel_err(got_img, want_img) <= 2e-6
    assert _rel_err(got_txt, want_txt) <= 2e-6
    assert float(model.logit_scale[...]) == 3.25

    # The converted model survives an orbax round trip bit for bit.
    save_model(tmp_path / "model", model)
    again = load_clip(tmp_path / "model")
    np.testing.assert_array_equal(again.encode_text(tokens.astype(np.int32)), got_txt)


def test_state_dict_reading_strips_prefix_and_skips_other_entries(tmp_path, monkeypatch):
    ref = _reference("diff")
    want = _save_release(ref, tmp_path / "ckpt.pt")
    reads = []
    original = torch_weights._materialize
    monkeypatch.setattr(
        torch_weights, "_materialize", lambda *a: reads.append(a[2].storage.key) or original(*a)
    )
    state = read_state_dict(tmp_path / "ckpt.pt")
    assert sorted(state) == sorted(k[len("module.") :] for k in want)
    assert len(reads) == len(want)  # optimizer / scaler storages are never read
    for key, value in want.items():
        np.testing.assert_array_equal(state[key[len("module.") :]], value.numpy())
        assert state[key[len("module.") :]].dtype == np.float32


def test_bare_state_dict_and_strided_views(tmp_path):
    a = torch.arange(12.0).reshape(3, 4)
    tensors = {"t": a.t(), "row": a[1], "scalar": a[2, 3], "h": a.half(), "bf": a.bfloat16()}
    torch.save(tensors, tmp_path / "s.pt")
    state = read_state_dict(tmp_path / "s.pt")
    np.testing.assert_array_equal(state["bf"].astype(np.float32), a.numpy())
    np.testing.assert_array_equal(state["t"], a.numpy().T)
    np.testing.assert_array_equal(state["row"], a.numpy()[1])
    assert state["scalar"].shape == () and state["scalar"] == 11.0
    assert state["h"].dtype == np.float16


def _state(attention):
    ref = _reference(attention)
    return {k: v.numpy() for k, v in ref.state_dict().items()}


def test_missing_extra_and_wrong_shape_keys_are_named():
    config = CONFIGS["diff"]
    state = _state("diff")
    missing = dict(state)
    del missing["visual.blocks.1.attn.lambda_q2"]
    with pytest.raises(ConversionError, match=r"missing key.*visual\.blocks\.1\.attn\.lambda_q2"):
        convert.convert_state_dict(missing, config)
    extra = dict(state, **{"visual.head.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected key.*visual\.head\.weight"):
        convert.convert_state_dict(extra, config)
    wrong = dict(state, text_projection=state["text_projection"].T.copy())
    with pytest.raises(ConversionError, match=r"wrong shape.*text_projection: \(16, 32\)"):
        convert.convert_state_dict(wrong, config)
    nan = dict(state, logit_scale=np.float32(np.nan))
    with pytest.raises(ConversionError, match="non-finite.*logit_scale"):
        convert.convert_state_dict(nan, config)


def test_architecture_mismatch_is_an_error():
    # A baseline checkpoint is not a DiffCLIP one, and vice versa; detect_attention tells which.
    state = _state("softmax")
    assert convert.detect_attention(state) == "softmax"
    assert convert.detect_attention(_state("diff")) == "diff"
    with pytest.raises(ConversionError, match=r"(?s)DiffCLIP.*missing key"):
        convert.convert_state_dict(state, CONFIGS["diff"])
    with pytest.raises(ConversionError, match="wrong shape"):
        convert.convert_state_dict(state, CONFIGS["softmax"].replace(vision_layers=2, embed_dim=8))


def test_bad_files_raise_conversion_errors(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ConversionError, match="not a torch zip archive"):
        read_state_dict(legacy)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"a": torch.ones(4)}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ConversionError):
        read_state_dict(truncated)
    # A storage with fewer bytes than its tensors claim.
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(short, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:8] if name.endswith("data/0") else data)
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        read_state_dict(short)
    no_state = tmp_path / "no_state.pt"
    torch.save({"epoch": 1, "args": "x"}, no_state)
    with pytest.raises(ConversionError, match="no model state dict"):
        read_state_dict(no_state)
    assert issubclass(ConversionError, CheckpointError)


def test_convert_cli(tmp_path, capsys):
    from tests.commandline import diffjax, diffjax_error

    config = clip_preset("tiny_diff")  # full 77-token context and 49,408-token vocabulary
    ref = _reference("diff", config=config)
    _save_release(ref, tmp_path / "checkpoint_best.pt")
    out = tmp_path / "model"
    argv = ["convert-clip", str(tmp_path / "checkpoint_best.pt"), str(out), "--preset",
            "tiny_diff"]  # fmt: skip
    assert diffjax(*argv)["preset"] == "tiny_diff"
    record = json.loads((out / "conversion.json").read_text())
    assert record["attention"] == "diff" and record["preset"] == "tiny_diff"
    assert (
        record["source_sha256"]
        == hashlib.sha256((tmp_path / "checkpoint_best.pt").read_bytes()).hexdigest()
    )
    model = load_clip(out)
    tokens = np.zeros((1, 77), np.int32)
    tokens[0, :3] = [49406, 320, 49407]
    with torch.no_grad():
        want = ref.double().encode_text(torch.from_numpy(tokens.astype(np.int64))).numpy()
    assert _rel_err(model.encode_text(tokens), want) <= 2e-6
    # 'auto' reads the keys as DiffCLIP and checks them against the ViT-B/16 release shapes.
    assert "wrong shape" in diffjax_error(capsys, *argv[:2], str(tmp_path / "auto"))
    assert "--overwrite" in diffjax_error(capsys, *argv[:3])  # refuses to overwrite
