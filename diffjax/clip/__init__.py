"""CLIP and DiffCLIP in Flax NNX: towers, tokenizer, torch-free checkpoint conversion, zero-shot
classification and small contrastive training.

    from diffjax.clip import CLIP, clip_preset, load_clip, zeroshot_classifier, CIFAR_TEMPLATES
    model = load_clip("models/diffclip_cc3m")                 # converted release checkpoint
    classifier = zeroshot_classifier(model, names, CIFAR_TEMPLATES)
    logits = classifier(images)                                # [B, classes] cosine similarities
"""

from diffjax import lazy_exports

# name → the module that defines it; imported on first use, so that the command line reads
# CLIP_PRESETS (diffjax.clip.config, no JAX) before it imports the models.
_EXPORTS = {
    "CIFAR_TEMPLATES": "diffjax.clip.zeroshot",
    "CLIP": "diffjax.clip.model",
    "CLIPConfig": "diffjax.clip.config",
    "CLIP_PRESETS": "diffjax.clip.config",
    "ContrastiveConfig": "diffjax.clip.train",
    "ConversionError": "diffjax.clip.convert",
    "IMAGENET_TEMPLATES": "diffjax.clip.zeroshot",
    "ImageTower": "diffjax.clip.model",
    "PHOTO_TEMPLATES": "diffjax.clip.zeroshot",
    "TEMPLATE_SETS": "diffjax.clip.zeroshot",
    "TextTower": "diffjax.clip.model",
    "Tokenizer": "diffjax.clip.tokenizer",
    "ZeroShotClassifier": "diffjax.clip.zeroshot",
    "class_embeddings": "diffjax.clip.zeroshot",
    "clip_preset": "diffjax.clip.config",
    "contrastive_loss": "diffjax.clip.train",
    "convert_checkpoint": "diffjax.clip.convert",
    "default_tokenizer": "diffjax.clip.tokenizer",
    "l2_normalize": "diffjax.clip.model",
    "load_clip": "diffjax.clip.checkpoint",
    "prompt_classifier": "diffjax.clip.attack",
    "prompt_cosine_loss": "diffjax.clip.attack",
    "read_clip_config": "diffjax.clip.checkpoint",
    "read_state_dict": "diffjax.clip.convert",
    "train_contrastive": "diffjax.clip.train",
    "zeroshot_accuracy": "diffjax.clip.zeroshot",
    "zeroshot_classifier": "diffjax.clip.zeroshot",
    "zeroshot_logits": "diffjax.clip.zeroshot",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
