"""The paper's CLIP attack objective, ready for a generic PGD.

The attack perturbs an image x within an ε-ball to *minimise* the cosine similarity between its
image embedding and the embedding t_y of its true class's prompt:

    min_{‖x' − x‖ ≤ ε, x' ∈ [0, 1]}  cos(f_img(x'), t_y)

Success is judged on the zero-shot prediction argmax_c cos(f_img(x'), t_c).

With PGD that *ascends* ``loss_fn(logits, labels) -> [B]``:

    model = prompt_classifier(clip, class_names)      # images -> cos [B, classes]
    adv = pgd(model, images, labels, loss_fn=prompt_cosine_loss, ...)
    rates = attack_success(model(images), model(adv), labels)

``model`` is a :class:`ZeroShotClassifier`, so the toolkit's other attacks (cross-entropy PGD, CW,
…) apply to it unchanged. Give it ``scale=exp(logit_scale)`` for CE-based attacks that need
CLIP's temperature; the cosine objective only changes by a positive factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.clip.model import CLIP
from diffjax.clip.tokenizer import Tokenizer
from diffjax.clip.zeroshot import ZeroShotClassifier, zeroshot_classifier

Array = jax.Array

# One prompt per class, as in DiffCLIP's test_models.py (the paper's own prompt is not public).
DEFAULT_PROMPT = "a photo of a {}."


def prompt_classifier(
    model: CLIP,
    class_names: Sequence[str],
    template: str = DEFAULT_PROMPT,
    tokenizer: Tokenizer | None = None,
) -> ZeroShotClassifier:
    """Images → cosine similarity to each class's single prompt, [B, classes] float32."""
    return zeroshot_classifier(model, class_names, [template], tokenizer)


def prompt_cosine_loss(logits: Array, labels: Array) -> Array:
    """−(logit of the true class), per example [B]: −cos(image, true prompt) for unit scale.

    Args:
      logits: [B, classes] cosine similarities (times a positive scale).
      labels: [B] integer true classes.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [B, C] and labels [B], got {logits.shape}, {labels.shape}")
    return -jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def attack_success(clean_logits, adv_logits, labels) -> dict[str, float]:
    """Zero-shot accuracies and the attack success rate.

    ASR is the fraction of the examples classified correctly before the attack that are
    misclassified after it (NaN when none was correct).

    Args:
      clean_logits, adv_logits: [N, classes] logits before and after the attack.
      labels: [N] true classes.

    Returns:
      ``{"clean_accuracy", "adversarial_accuracy", "asr", "num_clean_correct"}``.
    """
    clean, adv, labels = np.asarray(clean_logits), np.asarray(adv_logits), np.asarray(labels)
    if clean.shape != adv.shape or clean.ndim != 2 or labels.shape != clean.shape[:1]:
        raise ValueError(
            f"need clean/adv logits [N, C] of one shape and labels [N], got {clean.shape}, "
            f"{adv.shape}, {labels.shape}"
        )
    correct = clean.argmax(-1) == labels
    fooled = adv.argmax(-1) != labels
    n = int(correct.sum())
    return {
        "clean_accuracy": float(correct.mean()),
        "adversarial_accuracy": float((~fooled).mean()),
        "asr": float((correct & fooled).sum() / n) if n else float("nan"),
        "num_clean_correct": n,
    }
