"""A PyTorch eager ViT / DiffViT with the same architecture and FLOPs as :class:`diffjax.ViT`.

The benchmark-only reference that diffjax's speed is measured against, and the model that
auto_LiRPA bounds in benchmarks/verify_lirpa.py. ``from_diffjax`` copies a diffjax model's
parameters so both compute the same function (checked by the tests: to 1e-5 in float32, to
1e-12 in float64; the ops are in forms auto_LiRPA can trace, the GELU a swappable module).
torch is an optional dependency (the ``bench`` and ``test`` extras).
"""

from __future__ import annotations

import numpy as np
import torch
from flax import nnx
from torch import nn

from diffjax.config import ViTConfig


class Attention(nn.Module):
    """Softmax attention (``diff=False``) or Differential Attention over [B, N, D]."""

    def __init__(self, c: ViTConfig, diff: bool, lambda_init: float):
        super().__init__()
        self.diff, self.heads, self.lambda_init = diff, c.num_heads, lambda_init
        self.q, self.k, self.v, self.out = (
            nn.Linear(c.width, c.width, bias=c.qkv_bias) for _ in range(4)
        )
        d = c.width // c.num_heads
        if diff:
            self.lambdas = nn.ParameterList([nn.Parameter(torch.zeros(d)) for _ in range(4)])
            self.subln_scale = nn.Parameter(torch.ones(2 * d))

    def forward(self, x):
        b, n, width = x.shape
        d = width // self.heads
        q = self.q(x).view(b, n, self.heads, d).transpose(1, 2) * d**-0.5
        k = self.k(x).view(b, n, self.heads, d).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        if not self.diff:
            v = self.v(x).view(b, n, self.heads, d).transpose(1, 2)
            return self.out((p @ v).transpose(1, 2).reshape(b, n, width))
        h = self.heads // 2
        v = self.v(x).view(b, n, h, 2 * d).transpose(1, 2)
        p = p.view(b, h, 2, n, n)
        lq1, lk1, lq2, lk2 = self.lambdas
        lam = torch.exp(lq1 @ lk1) - torch.exp(lq2 @ lk2) + self.lambda_init
        o = (p[:, :, 0] - lam * p[:, :, 1]) @ v
        # 1/sqrt rather than rsqrt: ONNX (and so auto_LiRPA's tracer) has no rsqrt, and exports
        # it as a Div that auto_LiRPA mistakes for its LayerNorm pattern.
        o = o * torch.reciprocal(torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5))
        o = o * self.subln_scale * (1 - self.lambda_init)
        return self.out(o.transpose(1, 2).reshape(b, n, width))


class Block(nn.Module):
    def __init__(self, c: ViTConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.attn = Attention(c, c.is_diff_layer(layer), c.layer_lambda_init(layer))
        self.norm2 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        hidden = int(round(c.width * c.mlp_ratio))
        self.fc1, self.fc2 = nn.Linear(c.width, hidden), nn.Linear(hidden, c.width)
        # A module, so a verifier can put its own traceable GELU in its place.
        self.act = nn.GELU()

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.fc2(self.act(self.fc1(self.norm2(h))))


class TorchViT(nn.Module):
    """Takes NHWC images in [0, 1], like diffjax."""

    def __init__(self, c: ViTConfig):
        super().__init__()
        self.c = c
        self.patch_embed = nn.Linear(c.patch_size**2 * c.channels, c.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.width))
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.depth))
        self.norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.width, c.num_classes)
        # float64 here, unrounded: from_diffjax casts the twin to the model's precision.
        self.register_buffer("mean", torch.tensor(c.mean, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(c.std, dtype=torch.float64))

    def forward(self, images):
        c = self.c
        x = (images - self.mean) / self.std
        b, p, g = x.shape[0], c.patch_size, c.image_size // c.patch_size
        x = x.reshape(b, g, p, g, p, c.channels).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
        h = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(x)], 1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])


def _copy_linear(dst: nn.Linear, src: dict) -> None:
    dst.weight.copy_(torch.tensor(np.asarray(src["kernel"]).T))
    if dst.bias is not None:
        dst.bias.copy_(torch.tensor(np.asarray(src["bias"])))


def _copy_norm(dst: nn.LayerNorm, src: dict) -> None:
    dst.weight.copy_(torch.tensor(np.asarray(src["scale"])))
    dst.bias.copy_(torch.tensor(np.asarray(src["bias"])))


# The switches TorchViT implements only at these values (the defaults): any other is refused,
# since a twin computing a different function would make every comparison with it meaningless.
MODELLED = {"activation": "gelu", "ln_pre": False, "patch_bias": True, "pool": "cls",
            "distillation": False, "scan_layers": False}  # fmt: skip


@torch.no_grad()
def from_diffjax(model) -> TorchViT:
    """A :class:`TorchViT` computing the same function as the diffjax ``model``.

    Raises:
      ValueError: the model has a switch the twin does not implement (:data:`MODELLED`).
    """
    c = model.config
    other = {k: getattr(c, k) for k, v in MODELLED.items() if getattr(c, k) != v}
    if other:
        raise ValueError(f"the torch twin implements only {MODELLED}; this model has {other}")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Built in the model's precision: parameters copied into float32 would be rounded.
    ref = TorchViT(model.config).to(torch.float64 if c.dtype == "float64" else torch.float32)
    _copy_linear(ref.patch_embed, params["patch_embed"])
    ref.cls_token.copy_(torch.tensor(np.asarray(params["cls_token"])))
    ref.pos_embed.copy_(torch.tensor(np.asarray(params["pos_embed"])))
    for i, block in enumerate(ref.blocks):
        p = params["blocks"][i]
        _copy_norm(block.norm1, p["norm1"])
        _copy_norm(block.norm2, p["norm2"])
        _copy_linear(block.fc1, p["fc1"])
        _copy_linear(block.fc2, p["fc2"])
        for name in ("q", "k", "v", "out"):
            _copy_linear(getattr(block.attn, name), p["attn"][name])
        if block.attn.diff:
            names = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
            for dst, name in zip(block.attn.lambdas, names, strict=True):
                dst.copy_(torch.tensor(np.asarray(p["attn"][name])))
            block.attn.subln_scale.copy_(torch.tensor(np.asarray(p["attn"]["subln_scale"])))
    _copy_norm(ref.norm, params["norm"])
    _copy_linear(ref.head, params["head"])
    return ref
