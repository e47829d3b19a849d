"""Zero-shot classification with CLIP: class embeddings from prompt templates, cosine logits.

    names = dataset.class_names
    classifier = zeroshot_classifier(model, names, CIFAR_TEMPLATES)   # a ViT-like classifier
    logits = classifier(images)            # [B, classes] cosine similarities (SLIP protocol)
    acc = zeroshot_accuracy(classifier, dataset.images, dataset.labels)

Class embedding (SLIP / CLIP protocol): embed every "template.format(class name)", L2-normalise
each, average over the templates, L2-normalise again. Logits are the cosine similarities
between the normalised image feature and the class embeddings (SLIP does not multiply by the
logit scale for accuracy; pass ``scale`` for a temperature-scaled softmax, e.g. for CE attacks).

:class:`ZeroShotClassifier` has the interface of :class:`diffjax.vit.ViT` (``embed``, ``blocks``,
``classify``, ``__call__(images, capture=True)``), so attacks, per-branch Jacobians, gradient
alignment and Lipschitz estimates written for ViT run on CLIP unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffjax import sharding
from diffjax.clip.model import CLIP, ImageTower, l2_normalize
from diffjax.clip.tokenizer import Tokenizer, default_tokenizer
from diffjax.vit import ViT

Array = jax.Array

# SLIP templates.json "cifar10" / "cifar100" (18 templates) and "imagenet" (7 templates).
CIFAR_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)
IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# DiffCLIP's test_models.py: one prompt per class.
PHOTO_TEMPLATES = ("a photo of a {}",)
TEMPLATE_SETS = {"cifar": CIFAR_TEMPLATES, "imagenet": IMAGENET_TEMPLATES, "photo": PHOTO_TEMPLATES}


class ClassEmbeddings(nnx.Variable):
    """Fixed [classes, E] unit-norm class embeddings (not a trainable parameter)."""


def batched_apply(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over ``x`` in fixed-size batches sharded over the devices; the last one padded.

    Args:
      fn: jitted function of a [batch_size, ...] array.
      x: [N, ...] host array.
      batch_size: rows per call (at most N); rounded up to a multiple of the device count.

    Returns:
      [N, ...] host array of the concatenated outputs.
    """
    n = len(x)
    if n == 0:
        raise ValueError("nothing to evaluate: empty input")
    devices = jax.device_count()
    batch_size = -(-max(1, min(batch_size, n)) // devices) * devices
    rows = sharding.batch_sharding(sharding.data_mesh())
    outs = []
    for start in range(0, n, batch_size):
        chunk = x[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(np.asarray(fn(jax.device_put(chunk, rows)))[: batch_size - pad])
    return np.concatenate(outs)


def check_templates(class_names: Sequence[str], templates: Sequence[str]) -> None:
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates:
        raise ValueError("templates is empty")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"every template needs exactly one '{{}}' placeholder: {bad}")


def class_embeddings(
    model: CLIP,
    class_names: Sequence[str],
    templates: Sequence[str],
    tokenizer: Tokenizer | None = None,
    batch_size: int = 256,
) -> Array:
    """Unit-norm class embeddings [classes, E]: the mean of the normalised prompt embeddings.

    Args:
      model: the CLIP whose text tower embeds the prompts.
      class_names: C names, substituted into each template with ``str.format``.
      templates: T templates with one ``{}`` each (e.g. :data:`CIFAR_TEMPLATES`).
      tokenizer: default: the shipped CLIP BPE tokenizer.
      batch_size: prompts per text-tower call.
    """
    check_templates(class_names, templates)
    tokenizer = tokenizer or default_tokenizer()
    prompts = [t.format(name) for name in class_names for t in templates]
    tokens = tokenizer(prompts, context_length=model.config.context_length)
    graphdef, state = nnx.split(model.text)

    @jax.jit
    def encode(tokens):
        return l2_normalize(nnx.merge(graphdef, state)(tokens))

    emb = batched_apply(encode, tokens, batch_size)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return l2_normalize(jnp.asarray(emb))


class ZeroShotClassifier(nnx.Module):
    """Images → cosine similarities to fixed class embeddings, with the :class:`ViT` interface.

    Call with NHWC images in [0, 1] ([B, H, W, C] or one image); returns ``scale`` ·
    cos(image feature, class embedding), [B, classes] float32, float64 in float64 mode
    (``capture=True`` as for ViT).
    """

    def __init__(self, visual: ImageTower, embeddings: Array, scale: float = 1.0):
        e = visual.config.num_classes
        if embeddings.ndim != 2 or embeddings.shape[1] != e:
            raise ValueError(f"class embeddings must be [classes, {e}], got {embeddings.shape}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.visual = visual
        self.class_embeddings = ClassEmbeddings(l2_normalize(jnp.asarray(embeddings)))
        self.scale = float(scale)

    @property
    def config(self):
        """The image tower's :class:`ViTConfig` (image size, patch size, depth, …)."""
        return self.visual.config

    @property
    def blocks(self):
        return self.visual.blocks

    def embed(self, images: Array) -> Array:
        """h_0 [B, N, D] of the image tower (see :meth:`ViT.embed`)."""
        return self.visual.embed(images)

    def classify(self, h: Array) -> Array:
        """h_L [B, N, D] → ``scale`` · cosine similarities [B, classes] (float32; float64 in
        float64 mode)."""
        return self.scale * l2_normalize(self.visual.classify(h)) @ self.class_embeddings[...].T

    # ViT's forward pass (single images, dropout, capture hooks) over this embed/blocks/classify.
    __call__ = ViT.__call__


def zeroshot_classifier(
    model: CLIP,
    class_names: Sequence[str],
    templates: Sequence[str],
    tokenizer: Tokenizer | None = None,
    scale: float = 1.0,
) -> ZeroShotClassifier:
    """:class:`ZeroShotClassifier` over ``model.visual`` with :func:`class_embeddings`."""
    emb = class_embeddings(model, class_names, templates, tokenizer)
    return ZeroShotClassifier(model.visual, emb, scale)


def zeroshot_logits(
    classifier: nnx.Module, images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Logits [N, classes] of uint8 (or [0, 1] float) NHWC ``images``, in sharded batches."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    uint8 = images.dtype == np.uint8
    if not uint8 and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"float images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]"
        )
    graphdef, state = nnx.split(classifier)

    @jax.jit
    def logits(x):
        x = x.astype(jnp.float32) / 255.0 if uint8 else x
        return nnx.merge(graphdef, state)(x)

    return batched_apply(logits, images, batch_size)


def zeroshot_accuracy(
    classifier: nnx.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``classifier`` on ``images`` (see :func:`zeroshot_logits`)."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels shape {labels.shape} does not match {len(images)} images")
    pred = zeroshot_logits(classifier, images, batch_size).argmax(axis=-1)
    return float(np.mean(pred == labels))
