"""Float64 NumPy references written from the formulas of the spec, independent of diffjax code.

Loops over heads and explicit feature slices instead of reshapes, so a wrong sub-head pairing or
value layout in the library cannot be reproduced here by accident.
"""

import numpy as np


def np_softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def rotary(x, base):
    """Interleaved rotary embedding of x [B, N, d] at positions 0..N-1, pair by pair."""
    out = np.array(x, np.float64)
    d = x.shape[-1]
    for pos in range(x.shape[1]):
        for i in range(d // 2):
            angle = pos / base ** (2 * i / d)
            c, s = np.cos(angle), np.sin(angle)
            a, b = x[:, pos, 2 * i], x[:, pos, 2 * i + 1]
            out[:, pos, 2 * i], out[:, pos, 2 * i + 1] = a * c - b * s, a * s + b * c
    return out


def _rot(x, base):
    return x if base is None else rotary(x, base)


def _dense(x, p):
    y = x @ np.asarray(p["kernel"], np.float64)
    if p.get("bias") is not None:
        y = y + np.asarray(p["bias"], np.float64)
    return y


def softmax_attention(params, x, num_heads, mask=None, rotary_base=None):
    """x [B, N, D] → (out [B, N, D], maps [B, H, N, N]); RoPE per head if ``rotary_base``."""
    x = np.asarray(x, np.float64)
    b, n, width = x.shape
    d = width // num_heads
    q, k, v = (_dense(x, params[name]) for name in ("q", "k", "v"))
    heads, maps = [], []
    for h in range(num_heads):
        sl = slice(h * d, (h + 1) * d)
        qh, kh = _rot(q[..., sl], rotary_base), _rot(k[..., sl], rotary_base)
        s = qh @ kh.transpose(0, 2, 1) / np.sqrt(d)
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        a = np_softmax(s)
        maps.append(a)
        heads.append(a @ v[..., sl])
    return _dense(np.concatenate(heads, axis=-1), params["out"]), np.stack(maps, axis=1)


def diff_attention(params, x, num_heads, lambda_init, mask=None, eps=1e-5, rotary_base=None):
    """x [B, N, D] → (out [B, N, D], a1 [B, H, N, N], a2 [B, H, N, N], λ); RoPE per sub-head."""
    x = np.asarray(x, np.float64)
    b, n, width = x.shape
    d = width // num_heads
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items() if k.startswith("lambda")}
    lam = (
        np.exp(np.sum(p64["lambda_q1"] * p64["lambda_k1"]))
        - np.exp(np.sum(p64["lambda_q2"] * p64["lambda_k2"]))
        + lambda_init
    )
    scale = np.asarray(params["subln_scale"], np.float64)
    q, k, v = (_dense(x, params[name]) for name in ("q", "k", "v"))
    heads, a1s, a2s = [], [], []
    for h in range(num_heads // 2):
        b1 = slice(2 * h * d, 2 * h * d + d)  # branch-1 sub-head: features [2hd, 2hd + d)
        b2 = slice(2 * h * d + d, 2 * h * d + 2 * d)  # branch-2 sub-head
        val = v[..., 2 * h * d : 2 * h * d + 2 * d]  # value head 2d wide
        maps = []
        for sl in (b1, b2):
            qh, kh = _rot(q[..., sl], rotary_base), _rot(k[..., sl], rotary_base)
            s = qh @ kh.transpose(0, 2, 1) / np.sqrt(d)
            if mask is not None:
                s = np.where(mask, s, -np.inf)
            maps.append(np_softmax(s))
        a1, a2 = maps
        o = (a1 - lam * a2) @ val
        o = o / np.sqrt(np.mean(o**2, axis=-1, keepdims=True) + eps) * scale * (1 - lambda_init)
        heads.append(o)
        a1s.append(a1)
        a2s.append(a2)
    out = _dense(np.concatenate(heads, axis=-1), params["out"])
    return out, np.stack(a1s, 1), np.stack(a2s, 1), lam


def _layer_norm(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"], np.float64) + np.asarray(
        p["bias"], np.float64
    )


def _batch_norm(x, p, eps):
    """Evaluation-mode BatchNorm: the running statistics' per-feature affine map."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    return (x - p["mean"]) / np.sqrt(p["var"] + eps) * p["scale"] + p["bias"]


def vit_logits(params, config, images):
    """Float64 ViT/DiffViT forward from ``nnx.state(model, diffjax.vit.WEIGHTS)`` converted to
    dicts (exact GELU or ReLU; LayerNorm or evaluation-mode BatchNorm)."""
    from scipy.special import erf

    norm = {"layernorm": _layer_norm, "batchnorm": _batch_norm}[config.norm]
    act = {
        "gelu": lambda m: 0.5 * m * (1 + erf(m / np.sqrt(2))),
        "relu": lambda m: np.maximum(m, 0.0),
    }[config.activation]

    c = config
    x = (np.asarray(images, np.float64) - np.asarray(c.mean)) / np.asarray(c.std)
    b, p, g = x.shape[0], c.patch_size, c.image_size // c.patch_size
    patches = np.stack(
        [x[:, i * p : (i + 1) * p, j * p : (j + 1) * p, :].reshape(b, -1)
         for i in range(g) for j in range(g)], axis=1)  # fmt: skip
    tokens = _dense(patches, params["patch_embed"])
    cls = np.broadcast_to(np.asarray(params["cls_token"], np.float64), (b, 1, c.width))
    h = np.concatenate([cls, tokens], axis=1) + np.asarray(params["pos_embed"], np.float64)
    for layer in range(c.depth):
        blk = params["blocks"][layer]
        a_in = norm(h, blk["norm1"], c.layer_norm_eps)
        att = blk["attn"]
        if c.is_diff_layer(layer):
            a, *_ = diff_attention(att, a_in, c.num_heads, c.layer_lambda_init(layer))
        else:
            a, _ = softmax_attention(att, a_in, c.num_heads)
        h = h + a
        m = _dense(norm(h, blk["norm2"], c.layer_norm_eps), blk["fc1"])
        h = h + _dense(act(m), blk["fc2"])
    return _dense(norm(h, params["norm"], c.layer_norm_eps)[:, 0], params["head"])


def _rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * np.asarray(scale, np.float64)


def lm_logits(params, config, tokens):
    """Float64 decoder-only (Diff) Transformer forward: tokens [B, N] → logits [B, N, V].

    Pre-RMSNorm blocks, causal attention with RoPE, SwiGLU FFN (no biases), final RMSNorm,
    untied output head, from ``nnx.state(model, nnx.Param)`` as plain dicts.
    """
    c = config
    n = tokens.shape[1]
    mask = np.tril(np.ones((n, n), bool))
    h = np.asarray(params["embedding"], np.float64)[np.asarray(tokens)]
    for layer in range(c.depth):
        blk = params["blocks"][layer]
        a_in = _rms_norm(h, blk["norm1"]["scale"], c.rms_eps)
        if c.attention == "diff":
            lam_init = c.layer_lambda_init(layer)
            a, *_ = diff_attention(blk["attn"], a_in, c.num_heads, lam_init, mask,
                                   rotary_base=c.rotary_base)  # fmt: skip
        else:
            a, _ = softmax_attention(blk["attn"], a_in, c.num_heads, mask, c.rotary_base)
        h = h + a
        f_in = _rms_norm(h, blk["norm2"]["scale"], c.rms_eps)
        gate = _dense(f_in, blk["gate"])
        h = h + _dense(gate / (1 + np.exp(-gate)) * _dense(f_in, blk["up"]), blk["down"])
    return _dense(_rms_norm(h, params["norm"]["scale"], c.rms_eps), params["head"])
