"""CLIP and DiffCLIP: a ViT image tower and a causal text transformer mapped to one embedding space.

    image feature = LN(h_L)[CLS] @ W_img                    (timm ViT-B/16, exact GELU, no bias)
    text feature  = ln_final(x_L)[argmax(token id)] @ W_txt (causal, QuickGELU, EOT pooling)

(the activations, ``ln_pre`` and the normalisation are config switches: the OpenAI / open_clip
layouts use ``ln_pre``, QuickGELU or exact GELU in both towers, and OpenAI's image statistics).
    logits        = exp(logit_scale) · cos(image feature, text feature)

DiffCLIP swaps every attention layer of both towers for Differential Attention. The image tower
is a :class:`diffjax.vit.ViT` whose head is the bias-free image projection, so everything that
works on a ViT (``capture=True`` hooks, ``embed``/``blocks``/``classify``, per-branch Jacobians,
``functional``) works on it unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffjax.attention import DENSE_INIT, DiffAttention, SoftmaxAttention
from diffjax.clip.config import CLIPConfig
from diffjax.vit import ACTIVATION_FUNCTIONS, ViT, run_blocks, unbatch

Array = jax.Array


class ImageTower(ViT):
    """ViT-B/16-style image tower: the CLS token after the final LayerNorm, times ``W_img``.

    A :class:`ViT` whose ``config`` is ``clip_config.vision_config()`` (``num_classes`` = E) and
    whose ``head`` is the bias-free projection [D, E]. Call with NHWC images in [0, 1]; returns the
    unnormalised image features [B, E] float32 (``capture=True`` as for :class:`ViT`).
    """

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        super().__init__(config.vision_config(), rngs=rngs)
        self.head = nnx.Linear(
            config.vision_width,
            config.embed_dim,
            use_bias=False,
            kernel_init=nnx.initializers.normal(config.vision_width**-0.5),
            rngs=rngs,
        )


class TextBlock(nnx.Module):
    """Pre-norm causal block: LN → causal attention → residual; LN → MLP → residual (the MLP's
    activation is ``config.text_activation``, QuickGELU by default)."""

    def __init__(self, config: CLIPConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        self.dtype = jnp.dtype(c.dtype)
        self.accum_dtype = jnp.dtype(c.accum_dtype)
        self.activation = c.text_activation
        ln = dict(epsilon=c.text_ln_eps, dtype=self.accum_dtype, rngs=rngs)
        self.ln_1 = nnx.LayerNorm(c.text_width, **ln)
        if c.attention == "diff":
            self.attn = DiffAttention(
                c.text_width, c.text_heads, c.text_lambda_init(layer), use_bias=True, rngs=rngs
            )
        else:
            self.attn = SoftmaxAttention(c.text_width, c.text_heads, use_bias=True, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(c.text_width, **ln)
        hidden = int(round(c.text_width * c.text_mlp_ratio))
        dense = dict(
            kernel_init=DENSE_INIT, bias_init=nnx.initializers.zeros_init(), dtype=self.dtype
        )
        self.c_fc = nnx.Linear(c.text_width, hidden, rngs=rngs, **dense)
        self.c_proj = nnx.Linear(hidden, c.text_width, rngs=rngs, **dense)

    @staticmethod
    def causal_mask(n: int) -> Array:
        """[n, n] boolean, True where query i may attend to key j (j ≤ i)."""
        return jnp.tril(jnp.ones((n, n), bool))

    def attention_input(self, h: Array) -> Array:
        """LN1(h) in the compute dtype: what the attention layer sees. [B, N, D]."""
        return self.ln_1(h).astype(self.dtype)

    def __call__(self, h: Array, *, return_maps: bool = False):
        """Args: h [B, N, D] (accumulation dtype: float32, float64 in float64 mode). Returns
        h_next [B, N, D] (and the maps if asked)."""
        mask = self.causal_mask(h.shape[-2])
        a = self.attn(self.attention_input(h), mask=mask, return_maps=return_maps)
        a, maps = a if return_maps else (a, None)
        h = h + a.astype(self.accum_dtype)
        act = ACTIVATION_FUNCTIONS[self.activation]
        m = self.c_proj(act(self.c_fc(self.ln_2(h).astype(self.dtype))))
        h = h + m.astype(self.accum_dtype)
        return (h, maps) if return_maps else h


class TextTower(nnx.Module):
    """Causal text transformer: token ids [B, context] → unnormalised text features [B, E]."""

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.token_embedding = nnx.Embed(
            c.vocab_size,
            c.text_width,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        self.positional_embedding = nnx.Param(
            nnx.initializers.normal(0.01)(rngs.params(), (c.context_length, c.text_width))
        )
        self.blocks = nnx.List([TextBlock(c, i, rngs=rngs) for i in range(c.text_layers)])
        self.accum_dtype = jnp.dtype(c.accum_dtype)
        self.ln_final = nnx.LayerNorm(
            c.text_width, epsilon=c.text_ln_eps, dtype=self.accum_dtype, rngs=rngs
        )
        self.projection = nnx.Param(
            nnx.initializers.normal(c.text_width**-0.5)(rngs.params(), (c.text_width, c.embed_dim))
        )

    def _check_tokens(self, tokens: Array) -> None:
        c = self.config
        if tokens.ndim != 2 or tokens.shape[1] != c.context_length:
            raise ValueError(
                f"tokens must be [B, {c.context_length}] (or one sequence [{c.context_length}]), "
                f"got shape {tuple(tokens.shape)}"
            )
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if not isinstance(tokens, jax.core.Tracer):
            lo, hi = int(np.min(tokens)), int(np.max(tokens))
            if lo < 0 or hi >= c.vocab_size:
                raise ValueError(f"token ids must be in [0, {c.vocab_size}), got [{lo}, {hi}]")

    def embed(self, tokens: Array) -> Array:
        """Token plus positional embeddings: [B, context] int → h_0 [B, context, D] (float32,
        float64 in float64 mode)."""
        self._check_tokens(tokens)
        x = self.token_embedding(tokens).astype(self.accum_dtype)
        return x + self.positional_embedding[...].astype(self.accum_dtype)

    def pool(self, h: Array, tokens: Array) -> Array:
        """ln_final at the end-of-text position (largest id), times ``W_txt``: [B, E] float32."""
        eot = jnp.argmax(tokens, axis=-1)
        x = self.ln_final(h)[jnp.arange(h.shape[0]), eot]
        return x @ self.projection[...].astype(x.dtype)

    def __call__(self, tokens: Array, *, capture: bool = False):
        """Text features of ``tokens`` [B, context] (or one sequence [context]).

        With ``capture=True`` returns ``(features, Intermediates)`` (block inputs h_l
        [B, context, D] and causal :class:`AttentionMaps`, as for :class:`ViT`).
        """
        single = tokens.ndim == 1
        if single:
            tokens = tokens[None]
        h = self.embed(tokens)
        h, captured = run_blocks(self.blocks, h, capture=capture)
        features = self.pool(h, tokens)
        if single:
            features = features[0]
            captured = captured and unbatch(captured)
        return (features, captured) if capture else features


def l2_normalize(x: Array, axis: int = -1) -> Array:
    """x / ‖x‖₂ along ``axis``: float32, float64 for float64 ``x`` (the exact evaluation). A zero
    vector is an error upstream, not masked here."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True))


class CLIP(nnx.Module):
    """CLIP (``config.attention == "softmax"``) or DiffCLIP (``"diff"``).

    Attributes:
      visual: the :class:`ImageTower` (a :class:`ViT`).
      text: the :class:`TextTower`.
      logit_scale: [] the log of the contrastive temperature's inverse (init ln(1/0.07)).
    """

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.visual = ImageTower(config, rngs=rngs)
        self.text = TextTower(config, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

    def encode_image(self, images: Array) -> Array:
        """Images [B, H, W, C] in [0, 1] → unnormalised features [B, E] float32."""
        return self.visual(images)

    def encode_text(self, tokens: Array) -> Array:
        """Token ids [B, context] → unnormalised features [B, E] float32."""
        return self.text(tokens)

    def __call__(self, images: Array, tokens: Array) -> Array:
        """Scaled cosine similarities exp(logit_scale)·cos, [B_images, B_texts] float32
        (float64 in float64 mode: the scale's exp too, not only the cosines)."""
        img = l2_normalize(self.encode_image(images))
        txt = l2_normalize(self.encode_text(tokens))
        return jnp.exp(self.logit_scale[...].astype(img.dtype)) * img @ txt.T
