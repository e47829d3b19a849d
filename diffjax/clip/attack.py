"""The paper's CLIP attack objective, ready for a generic PGD.

The attack perturbs an image x within an ε-ball to *minimise* the cosine similarity between its
image embedding and the embedding t_y of its true class's prompt:

    min_{‖x' − x‖ ≤ ε, x' ∈ [0, 1]}  cos(f_img(x'), t_y)

Success is judged on the zero-shot prediction argmax_c cos(f_img(x'), t_c).

With the toolkit's PGD, which *ascends* ``loss(logits, labels) -> [B]``:

    clf = prompt_classifier(clip, class_names)        # images -> cos [B, classes]
    config = attacks.PGDConfig(eps=4 / 255, loss=prompt_cosine_loss)
    records = attacks.attack_dataset(attacks.pgd, attacks.model_function(clf), x, y, key, config)
    summary = attacks.summarize_records(records)      # zero-shot clean accuracy, ASR, …

``model`` is a :class:`ZeroShotClassifier`, so the toolkit's other attacks (cross-entropy PGD, CW,
…) apply to it unchanged. Give it ``scale=exp(logit_scale)`` for CE-based attacks that need
CLIP's temperature; the cosine objective only changes by a positive factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

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
