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


def softmax_attention(params, x, num_heads, mask=None, rotary_base=None, qk_norm_eps=None,
                      queries=None):  # fmt: skip
    """x [B, N, D] → (out [B, N, D], maps [B, H, N, N]); RoPE per head if ``rotary_base``;
    each head's q and k layer-normed (``params["q_norm"]``, ``["k_norm"]``) if ``qk_norm_eps``;
    q projected from ``queries`` [B, L, D] instead of x if given (attention pooling)."""
    x = np.asarray(x, np.float64)
    b, n, width = x.shape
    d = width // num_heads
    q, k, v = (_dense(x, params[name]) for name in ("q", "k", "v"))
    if queries is not None:
        q = _dense(np.asarray(queries, np.float64), params["q"])
    heads, maps = [], []
    for h in range(num_heads):
        sl = slice(h * d, (h + 1) * d)
        qh, kh = q[..., sl], k[..., sl]
        if qk_norm_eps is not None:
            qh = _layer_norm(qh, params["q_norm"], qk_norm_eps)
            kh = _layer_norm(kh, params["k_norm"], qk_norm_eps)
        qh, kh = _rot(qh, rotary_base), _rot(kh, rotary_base)
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


def _activation(m, name):
    from scipy.special import erf

    if name == "gelu":
        return 0.5 * m * (1 + erf(m / np.sqrt(2)))
    if name == "silu":
        return m / (1 + np.exp(-m))
    if name == "relu":
        return np.maximum(m, 0.0)
    if name == "gelu_tanh":
        return 0.5 * m * (1 + np.tanh(np.sqrt(2 / np.pi) * (m + 0.044715 * m**3)))
    raise ValueError(name)


def _mlp(x, blk, activation, gate):
    """fc2(act(fc1 x)); with ``gate`` fc1's output is [g | v] and fc2 reads act(g)·v."""
    m = _dense(x, blk["fc1"])
    if gate:
        half = m.shape[-1] // 2
        return _dense(_activation(m[..., :half], activation) * m[..., half:], blk["fc2"])
    return _dense(_activation(m, activation), blk["fc2"])


def _batch_norm(x, p, eps):
    """Evaluation-mode BatchNorm: the running statistics' per-feature affine map."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    return (x - p["mean"]) / np.sqrt(p["var"] + eps) * p["scale"] + p["bias"]


def vit_logits(params, config, images):
    """Float64 ViT/DiffViT forward from ``nnx.state(model, diffjax.vit.WEIGHTS)`` converted to
    dicts: the class, distillation and register tokens, positions with or without the prefix,
    LayerScale, qk-norm, gated MLPs, LayerNorm or evaluation-mode BatchNorm, and the cls / mean /
    attention-pool heads (or none)."""
    norm = {"layernorm": _layer_norm, "batchnorm": _batch_norm}[config.norm]
    c = config
    x = (np.asarray(images, np.float64) - np.asarray(c.mean)) / np.asarray(c.std)
    b, p, g = x.shape[0], c.patch_size, c.image_size // c.patch_size
    patches = np.stack(
        [x[:, i * p : (i + 1) * p, j * p : (j + 1) * p, :].reshape(b, -1)
         for i in range(g) for j in range(g)], axis=1)  # fmt: skip
    tokens = _dense(patches, params["patch_embed"])
    names = [n for n, on in (("cls_token", c.class_token), ("dist_token", c.distillation),
                             ("reg_token", c.num_registers > 0)) if on]  # fmt: skip
    prefix = [np.broadcast_to(np.asarray(params[n], np.float64), (b, *np.shape(params[n])[1:]))
              for n in names]  # fmt: skip
    pos = np.asarray(params["pos_embed"], np.float64)
    if c.pos_embed_prefix:
        h = np.concatenate([*prefix, tokens], axis=1) + pos
    else:
        h = np.concatenate([*prefix, tokens + pos], axis=1)
    if c.ln_pre:
        h = norm(h, params["ln_pre"], c.layer_norm_eps)
    for layer in range(c.depth):
        blk = params["blocks"][layer]
        a_in = norm(h, blk["norm1"], c.layer_norm_eps)
        att = blk["attn"]
        if c.is_diff_layer(layer):
            a, *_ = diff_attention(att, a_in, c.num_heads, c.layer_lambda_init(layer))
        else:
            eps = c.layer_norm_eps if c.qk_norm else None
            a, _ = softmax_attention(att, a_in, c.num_heads, qk_norm_eps=eps)
        gamma1, gamma2 = (np.asarray(blk[n], np.float64) if c.layer_scale else 1.0
                          for n in ("ls1", "ls2"))  # fmt: skip
        h = h + gamma1 * a
        m = _mlp(norm(h, blk["norm2"], c.layer_norm_eps), blk, c.activation, c.mlp_gate)
        h = h + gamma2 * m
    n_prefix = int(c.class_token) + int(c.distillation) + c.num_registers
    if c.pool == "mean":
        pooled = norm(h[:, n_prefix:].mean(1), params["norm"], c.layer_norm_eps)
    elif c.pool == "map":
        pool = params["attn_pool"]
        x = norm(h, params["norm"], c.layer_norm_eps)[:, n_prefix:]
        latent = np.broadcast_to(np.asarray(pool["latent"], np.float64), (b, 1, c.width))
        o, _ = softmax_attention(pool["attn"], x, c.num_heads, queries=latent)
        o = o + _mlp(norm(o, pool["norm"], c.layer_norm_eps), pool, c.activation, False)
        pooled = o[:, 0]
    else:
        pooled = norm(h, params["norm"], c.layer_norm_eps)[:, 0]
    return _dense(pooled, params["head"]) if c.num_classes else pooled


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
