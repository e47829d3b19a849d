"""CLIP and DiffCLIP in Flax NNX: towers, tokenizer, torch-free checkpoint conversion, zero-shot
classification and small contrastive training.

    from diffjax.clip import CLIP, clip_preset, load_clip, zeroshot_classifier, CIFAR_TEMPLATES
    model = load_clip("models/diffclip_cc3m")                 # converted release checkpoint
    classifier = zeroshot_classifier(model, names, CIFAR_TEMPLATES)
    logits = classifier(images)                                # [B, classes] cosine similarities
"""

from diffjax.clip.attack import (
    prompt_classifier,
    prompt_cosine_loss,
)
from diffjax.clip.checkpoint import load_clip, read_clip_config
from diffjax.clip.config import CLIP_PRESETS, CLIPConfig, clip_preset
from diffjax.clip.convert import ConversionError, convert_checkpoint, read_state_dict
from diffjax.clip.model import CLIP, ImageTower, TextTower, l2_normalize
from diffjax.clip.tokenizer import Tokenizer, default_tokenizer
from diffjax.clip.train import ContrastiveConfig, contrastive_loss, train_contrastive
from diffjax.clip.zeroshot import (
    CIFAR_TEMPLATES,
    IMAGENET_TEMPLATES,
    PHOTO_TEMPLATES,
    TEMPLATE_SETS,
    ZeroShotClassifier,
    class_embeddings,
    zeroshot_accuracy,
    zeroshot_classifier,
    zeroshot_logits,
)

__all__ = [
    "CIFAR_TEMPLATES",
    "CLIP",
    "CLIPConfig",
    "CLIP_PRESETS",
    "ContrastiveConfig",
    "ConversionError",
    "IMAGENET_TEMPLATES",
    "ImageTower",
    "PHOTO_TEMPLATES",
    "TEMPLATE_SETS",
    "TextTower",
    "Tokenizer",
    "ZeroShotClassifier",
    "class_embeddings",
    "clip_preset",
    "contrastive_loss",
    "convert_checkpoint",
    "default_tokenizer",
    "l2_normalize",
    "load_clip",
    "prompt_classifier",
    "prompt_cosine_loss",
    "read_clip_config",
    "read_state_dict",
    "train_contrastive",
    "zeroshot_accuracy",
    "zeroshot_classifier",
    "zeroshot_logits",
]
