"""CLIP / DiffCLIP towers, zero-shot classification and CLIP model directories."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.checkpoint import CheckpointError, load_model, save_model
from diffjax.clip.checkpoint import load_clip
from diffjax.clip.config import CLIPConfig, clip_preset
from diffjax.clip.convert import conversion_rules
from diffjax.clip.model import CLIP
from diffjax.clip.tokenizer import default_tokenizer
from diffjax.clip.zeroshot import (
    CIFAR_TEMPLATES,
    IMAGENET_TEMPLATES,
    ZeroShotClassifier,
    class_embeddings,
    zeroshot_accuracy,
    zeroshot_classifier,
    zeroshot_logits,
)
from diffjax.vit import ViT, count_params, functional, quick_gelu

SMALL = dict(context_length=8, vocab_size=50)


@pytest.fixture(scope="module", params=["tiny", "tiny_diff"])
def small(request):
    config = clip_preset(request.param, **SMALL)
    return CLIP(config, rngs=nnx.Rngs(0))


def _tokens(n, config, seed=0):
    rng = np.random.default_rng(seed)
    t = np.zeros((n, config.context_length), np.int32)
    for row in range(n):
        eot = rng.integers(1, config.context_length)
        t[row, :eot] = rng.integers(1, config.vocab_size - 1, eot)
        t[row, eot] = config.vocab_size - 1
    return t


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_release_shapes_match_the_spec():
    # The DiffCLIP release (arXiv 2503.06626): 517 tensors, 149,629,185 parameters, 9,216 more
    # than the baseline CLIP.
    counts = {}
    for name in ("diffclip_b16", "clip_b16"):
        config = clip_preset(name)
        model = nnx.eval_shape(lambda c=config: CLIP(c, rngs=nnx.Rngs(0)))
        counts[name] = count_params(model)
    assert counts["diffclip_b16"] == 149_629_185
    assert counts["diffclip_b16"] - counts["clip_b16"] == 24 * 384
    assert len(conversion_rules(clip_preset("diffclip_b16"))) == 517
    assert clip_preset("clip_b16").vision_ln_eps == 1e-6
    assert clip_preset("diffclip_b16").vision_ln_eps == 1e-5
    vision = clip_preset("diffclip_b16").vision_config()
    assert [vision.layer_lambda_init(i) for i in range(12)] == [0.8] * 12


def test_forward_is_scaled_cosine(small):
    c = small.config
    images, tokens = _images(3, c.image_size), _tokens(4, c)
    img, txt = small.encode_image(images), small.encode_text(tokens)
    assert img.shape == (3, c.embed_dim) and txt.shape == (4, c.embed_dim)
    want = math.exp(float(small.logit_scale[...])) * _unit(img) @ _unit(txt).T
    np.testing.assert_allclose(small(images, tokens), want, rtol=1e-5)
    np.testing.assert_allclose(small.encode_text(tokens[1]), txt[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.encode_image(images[2]), img[2], rtol=1e-5, atol=1e-6)


def test_quick_gelu():
    x = np.linspace(-6, 6, 101)
    np.testing.assert_allclose(quick_gelu(jnp.asarray(x)), x / (1 + np.exp(-1.702 * x)), rtol=1e-6)


def test_text_is_causal_and_pooled_at_eot(small):
    c = small.config
    tokens = _tokens(4, c, seed=1)
    eot = tokens.argmax(-1)
    base = small.encode_text(tokens)
    after = tokens.copy()
    before = tokens.copy()
    for row, e in enumerate(eot):
        after[row, e + 1 :] = (np.arange(c.context_length - e - 1) % 7) + 1
        before[row, 0] = (before[row, 0] % (c.vocab_size - 2)) + 1
    # Tokens after EOT (smaller ids) cannot reach the EOT position through a causal mask.
    np.testing.assert_array_equal(small.encode_text(after), base)
    assert not np.allclose(small.encode_text(before), base)
    _, inter = small.text(tokens, capture=True)
    assert len(inter.layer_inputs) == c.text_layers == len(inter.maps)
    for m in inter.maps:
        maps = [m.a1] if m.a2 is None else [m.a1, m.a2]
        for a in maps:
            assert not np.triu(np.asarray(a), k=1).any()
            np.testing.assert_allclose(np.asarray(a).sum(-1), 1.0, rtol=1e-5)
        assert (m.lam is None) == (c.attention == "softmax")


def test_image_tower_is_a_vit(small):
    c = small.config
    visual = small.visual
    assert isinstance(visual, ViT) and visual.head.bias is None
    images = _images(2, c.image_size, seed=2)
    feats, inter = visual(images, capture=True)
    assert len(inter.layer_inputs) == c.vision_layers
    h = inter.layer_inputs[-1]
    np.testing.assert_allclose(visual.classify(visual.blocks[-1](h)), feats, rtol=1e-5)
    apply, params = functional(visual)
    grad = jax.grad(lambda x: apply(params, x)[0])(jnp.asarray(images[0]))
    assert grad.shape == images[0].shape and np.isfinite(grad).all()


def test_zero_shot_matches_the_protocol():
    config = clip_preset("tiny_diff")  # real 77-token context and vocabulary
    model = CLIP(config, rngs=nnx.Rngs(1))
    names = ("airplane", "cat", "truck")
    templates = IMAGENET_TEMPLATES[:3]
    tok = default_tokenizer()
    feats = _unit(model.encode_text(tok([t.format(n) for n in names for t in templates])))
    want = _unit(feats.reshape(3, 3, -1).mean(axis=1))
    emb = class_embeddings(model, names, templates, batch_size=4)
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)

    classifier = ZeroShotClassifier(model.visual, emb, scale=2.0)
    images = _images(5, config.image_size, seed=3)
    cos = _unit(model.encode_image(images)) @ want.T
    np.testing.assert_allclose(classifier(images), 2.0 * cos, rtol=1e-5, atol=1e-6)
    logits, inter = classifier(images, capture=True)
    np.testing.assert_allclose(logits, 2.0 * cos, rtol=1e-5, atol=1e-6)
    assert len(inter.maps) == config.vision_layers and inter.maps[0].a2 is not None
    np.testing.assert_allclose(classifier.classify(inter.layer_inputs[0]).shape, (5, 3))

    uint8 = (images * 255).round().astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    unit = zeroshot_classifier(model, names, templates)
    logits = zeroshot_logits(unit, uint8, batch_size=2)
    np.testing.assert_allclose(logits, unit(uint8 / 255.0), rtol=1e-5, atol=1e-6)
    assert zeroshot_accuracy(unit, uint8, labels) == np.mean(logits.argmax(-1) == labels)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        zeroshot_logits(unit, uint8.astype(np.float32))


def test_bad_input_is_rejected(small):
    c = small.config
    with pytest.raises(ValueError, match="tokens must be"):
        small.encode_text(np.zeros((2, c.context_length + 1), np.int32))
    with pytest.raises(TypeError, match="integer"):
        small.encode_text(np.zeros((2, c.context_length), np.float32))
    with pytest.raises(ValueError, match="token ids"):
        small.encode_text(np.full((1, c.context_length), c.vocab_size, np.int32))
    with pytest.raises(ValueError, match="images must be"):
        small.encode_image(np.zeros((1, c.image_size + 1, c.image_size, 3), np.float32))
    with pytest.raises(ValueError, match="placeholder"):
        class_embeddings(small, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="class embeddings"):
        ZeroShotClassifier(small.visual, jnp.ones((3, c.embed_dim + 1)))
    with pytest.raises(ValueError, match="even text_heads"):
        CLIPConfig(attention="diff", text_heads=7, text_width=511)
    with pytest.raises(ValueError, match="patch_size"):
        clip_preset("tiny", patch_size=5)
    with pytest.raises(ValueError, match="unknown CLIP preset"):
        clip_preset("vit_b16")
    assert len(CIFAR_TEMPLATES) == 18 and len(IMAGENET_TEMPLATES) == 7


def test_model_directory_round_trip(small, tmp_path):
    save_model(tmp_path / "clip", small)
    again = load_clip(tmp_path / "clip")
    assert again.config == small.config
    tokens = _tokens(2, small.config)
    np.testing.assert_array_equal(again.encode_text(tokens), small.encode_text(tokens))
    with pytest.raises(CheckpointError, match="unknown ViTConfig fields"):
        load_model(tmp_path / "clip")
    vit = ViT(small.config.vision_config(), rngs=nnx.Rngs(0))
    save_model(tmp_path / "vit", vit)
    with pytest.raises(CheckpointError, match="unknown CLIPConfig fields"):
        load_clip(tmp_path / "vit")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_clip(tmp_path / "missing")
