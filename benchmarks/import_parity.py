"""Max |Δ| between imported models and the real libraries' (timm, transformers, open_clip) on
shared random weights, float32 and float64: the parity tests' reduced models (including the
DINOv2, DINOv2-with-registers, SigLIP-style, qk-norm, SwiGLU and EVA-02 timm layouts (EVA-02's
float64 reference: timm with its float32 rotary table rebuilt from float64 frequencies), Hugging
Face ``Dinov2Model`` and ``SiglipVisionModel``, ``LlamaForCausalLM`` with grouped-query attention,
untied and tied, and the Differential Transformer layout against the tests' float64 torch
re-implementation of its formulas); with ``--full`` the full-size timm
``vit_base_patch16_224`` and open_clip ``ViT-B-16-quickgelu`` / ``ViT-B-16`` (minutes on a
2-core CPU); with ``--large`` open_clip ``ViT-L-14``, image and text towers (about 8 GB of
memory; ``--only`` skips the reduced models).
Needs the ``test`` extra.

Each run saves its rows to ``results/import_parity/<reduced|full|large>.json`` and rewrites the
table of ``docs/import.md`` (between its ``parity`` markers) from every saved file, so the
documented numbers are the saved ones (``--render`` only rewrites the table).

    python -m benchmarks.import_parity [--full] [--large] [--only] [--render]
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib

import jax
import numpy as np
import open_clip
import pytest
import timm
import torch
import transformers
from flax import nnx
from timm.models.vision_transformer import checkpoint_filter_fn

from diffjax.analysis import with_dtype
from diffjax.checkpoint import write_json_atomic, write_text_atomic
from diffjax.clip.config import clip_preset
from diffjax.clip.convert import convert_state_dict, hf_config
from diffjax.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from diffjax.lm_import import config_from_hf, convert_llama
from diffjax.torch_weights import read_weights
from diffjax.vit_import import LIBRARY_STATS, convert_vit, infer_config
from tests import test_clip_huggingface as H
from tests import test_clip_openclip as C
from tests import test_diff_transformer_import as DT
from tests import test_eva_import as E
from tests import test_lm_import as LM
from tests import test_siglip_import as S
from tests import test_vit_import as T
from tests import test_vit_import_families as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "import_parity"
DOC = ROOT / "docs" / "import.md"
BEGIN, END = "<!-- parity:begin -->", "<!-- parity:end -->"
GROUPS = ("reduced", "full", "large")
ROWS: list[dict] = []


def record(family: str, output: str, d32: float, d64: float, scale: float) -> None:
    """One row: max |Δ| in float32 and float64, and the largest |reference output| (for the
    relative error)."""
    row = dict(family=family, output=output, float32=float(d32), float64=float(d64),
               scale=float(scale))  # fmt: skip
    ROWS.append(row)
    print(f"{family} {output}: float32 {d32:.2g} float64 {d64:.2g} "
          f"(relative {d32 / scale:.2g} / {d64 / scale:.2g})")  # fmt: skip


def _timm_scale(ref, config, images) -> float:
    return float(np.abs(T._torch_logits(ref, images, config.mean, config.std, torch.float64)).max())


def reduced() -> None:
    for case, (name, kwargs, overrides) in sorted(T.TIMM_CASES.items()):
        ref = T._randomise(timm.create_model(name, pretrained=False, **T.TINY, **kwargs))
        state = T._state(ref)
        config = infer_config(state, num_heads=4, **LIBRARY_STATS["timm"], **overrides)
        d = T._max_diffs(convert_vit(state, config), config, ref, T._images())
        record(f"timm {case}", "logits", *d, _timm_scale(ref, config, T._images()))
    for case, (name, kwargs, overrides, _) in sorted(F.TIMM_FAMILIES.items()):
        ref = T._randomise(timm.create_model(name, pretrained=False, **{**F.TINY, **kwargs}))
        state = T._state(ref)
        config = infer_config(state, num_heads=4, **LIBRARY_STATS["timm"], **overrides)
        images = T._images(size=28)
        d = T._max_diffs(convert_vit(state, config), config, ref, images)
        output = "logits" if config.num_classes else "features"
        record(f"timm {case} ({name})", output, *d, _timm_scale(ref, config, images))
    for case, (name, kwargs, _) in sorted(E.FAMILIES.items()):
        ref = T._randomise(timm.create_model(name, pretrained=False, **E.TINY, **kwargs))
        state = T._state(ref)
        config = infer_config(state, num_heads=2, rope_base=1e4, rope_ref_grid=16,
                              **LIBRARY_STATS["timm"])  # fmt: skip
        record(f"timm {case} ({name})", "logits",
               *E.eva_max_diffs(ref, convert_vit(state, config), T._images(size=28)))  # fmt: skip
    for swiglu in (False, True):
        ref = F._dinov2_reference(swiglu)
        state = T._state(ref)
        config = infer_config(state, num_heads=4, **LIBRARY_STATS["hf_dinov2"])
        model, images = convert_vit(state, config), T._images(size=28)
        got32 = np.asarray(nnx.jit(lambda m, x: m(x))(model, np.float32(images)))
        with jax.enable_x64():
            got64 = np.asarray(nnx.jit(lambda m, x: m(x))(with_dtype(model, "float64"), images))
        want32 = F._pooler(ref, images, config.mean, config.std, torch.float32)
        want64 = F._pooler(ref, images, config.mean, config.std, torch.float64)
        record(f"Hugging Face Dinov2Model{', SwiGLU' if swiglu else ''}", "pooler output",
               np.abs(got32 - want32).max(), np.abs(got64 - want64).max(),
               np.abs(want64).max())  # fmt: skip
    small = T._randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, **T.TINY))
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**T.TINY, "img_size": 48})
    big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
    config = infer_config(T._state(small), num_heads=4, image_size=48, **LIBRARY_STATS["timm"])
    d = T._max_diffs(convert_vit(T._state(small), config), config, big.eval(), T._images(size=48))
    record("timm ViT 32 px resampled to 48 px", "logits", *d,
           _timm_scale(big, config, T._images(size=48)))  # fmt: skip
    for act, ours in sorted(T.HF_ACTS.items()):
        hf = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    num_labels=5, hidden_act=act)  # fmt: skip
        torch.manual_seed(0)
        ref = T._randomise(transformers.ViTForImageClassification(hf))
        state = T._state(ref)
        config = infer_config(state, num_heads=4, activation=ours, **LIBRARY_STATS["hf"])
        d = T._max_diffs(convert_vit(state, config), config, ref, T._images(), hf=True)
        want = T._torch_logits(ref, T._images(), config.mean, config.std, torch.float64, hf=True)
        record(f"Hugging Face ViT {act}", "logits", *d, np.abs(want).max())
    for preset in ("openclip_b16", "openai_b16"):
        ref = C._small_reference(preset.startswith("openai"))
        config = clip_preset(preset, **C.SMALL)
        state = {k: v.numpy() for k, v in ref.state_dict().items()}
        images, tokens = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), C._tokens()
        got = C._features(convert_state_dict(state, config), images.astype(np.float32), tokens)
        want = C._reference_features(ref, images, tokens, config, torch.float32)
        with jax.enable_x64():
            model = convert_state_dict(state, config.replace(dtype="float64"))
            got64 = C._features(model, images, tokens)
        want64 = C._reference_features(ref, images, tokens, config, torch.float64)
        for i, tower in enumerate(("image", "text")):
            d32, d64 = np.abs(got[i] - want[i]).max(), np.abs(got64[i] - want64[i]).max()
            record(f"open_clip {preset} layout", f"{tower} features", d32, d64,
                   np.abs(want64[i]).max())  # fmt: skip
    _huggingface_clip()
    _huggingface_siglip()
    _language_models()


def _diffs(got32, got64, want32, want64) -> tuple[float, float, float]:
    """max |Δ| float32, float64 and the largest |float64 reference output|."""
    return (np.abs(got32 - want32).max(), np.abs(got64 - want64).max(), np.abs(want64).max())


def _huggingface_siglip() -> None:
    """The tests' SiglipVisionModel (attention-pool head, GELU-tanh)."""
    ref, images = S._reference(), T._images(size=28)
    state = T._state(ref)
    config = infer_config(state, num_heads=4, **LIBRARY_STATS["hf_siglip"])
    model = convert_vit(state, config)
    got32 = np.asarray(nnx.jit(lambda m, x: m(x))(model, np.float32(images)))
    with jax.enable_x64():
        got64 = np.asarray(nnx.jit(lambda m, x: m(x))(with_dtype(model, "float64"), images))
    want32, want64 = (S._pooled(ref, images, config.mean, config.std, t)
                      for t in (torch.float32, torch.float64))  # fmt: skip
    record("Hugging Face SiglipVisionModel", "pooler output", *_diffs(got32, got64, want32, want64))


def _language_models() -> None:
    """The tests' LlamaForCausalLM (GQA, untied and tied; float64 reference with transformers'
    float32 islands in float64, as the tests) and the Differential Transformer layout."""
    tokens = np.random.default_rng(0).integers(0, 50, (2, 9))
    for tie in (False, True):
        ref = LM._reference(tie)
        model = convert_llama(T._state(ref), config_from_hf(ref.config.to_dict()))
        with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
            want32 = ref(torch.from_numpy(tokens)).logits.numpy()
            want64 = LM._float64_islands(ref, patch)(torch.from_numpy(tokens)).logits.numpy()
        got32, got64 = LM.lm_logits(model, tokens)
        record(f"Hugging Face LlamaForCausalLM, GQA, {'tied' if tie else 'untied'}",
               "logits", *_diffs(got32, got64, want32, want64))  # fmt: skip
    ref = DT._reference()
    model = convert_llama({k: v.detach().numpy().copy() for k, v in ref.state_dict().items()},
                          DT.CONFIG)  # fmt: skip
    with torch.no_grad():
        want32 = ref(torch.from_numpy(tokens))[0].numpy()
        want64 = ref.double()(torch.from_numpy(tokens))[0].numpy()
    record("Differential Transformer layout (MultiheadDiffAttn) vs torch formulas", "logits",
           *_diffs(*LM.lm_logits(model, tokens), want32, want64))  # fmt: skip


def _huggingface_clip() -> None:
    """The tests' Hugging Face CLIPModel (GELU image tower, QuickGELU text tower)."""
    import tempfile

    ref = H._reference("quick_gelu", "gelu")
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        state = read_weights(pathlib.Path(tmp) / "model.safetensors")
        config = hf_config(json.loads((pathlib.Path(tmp) / "config.json").read_text()),
                           OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)  # fmt: skip
    images, tokens = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), C._tokens()
    model = convert_state_dict(state, config)
    got32 = [*C._features(model, np.float32(images), tokens),
             np.asarray(model(np.float32(images), tokens.astype(np.int32)))]  # fmt: skip
    with jax.enable_x64():
        m64 = with_dtype(model, "float64")
        got64 = [
            *C._features(m64, images, tokens),
            np.asarray(m64(images, tokens.astype(np.int32))),
        ]
    want32, want64 = (H._hf_features(ref, images, tokens, config.mean, config.std, t)
                      for t in (torch.float32, torch.float64))  # fmt: skip
    for i, output in enumerate(("image features", "text features", "logits")):
        record("Hugging Face CLIPModel", output, np.abs(got32[i] - want32[i]).max(),
               np.abs(got64[i] - want64[i]).max(), np.abs(want64[i]).max())  # fmt: skip


def _timm_full() -> None:
    x = T._images(1, 224)
    torch.manual_seed(0)  # the libraries' own random initialisation
    ref = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    state = T._state(ref)
    config = infer_config(state, num_heads=12, **LIBRARY_STATS["timm"])
    d = T._max_diffs(convert_vit(state, config), config, ref, x)
    record("timm vit_base_patch16_224, full size", "logits", *d, _timm_scale(ref, config, x))


def _open_clip_full(name: str, preset: str) -> None:
    """One full-size open_clip model with its own random initialisation, one image and one text,
    float32 then float64, holding at most one torch and one JAX copy of the weights at a time
    (ViT-L-14: 428M parameters, 3.4 GB per float64 copy)."""
    x, tokens = T._images(1, 224), C._tokens(1)
    torch.manual_seed(0)
    ref = open_clip.create_model(name, pretrained=None).eval()
    config = clip_preset(preset)
    diffs = {}
    for dtype, tdtype in (("float32", torch.float32), ("float64", torch.float64)):
        with jax.enable_x64(dtype == "float64"):
            state = {k: v.numpy() for k, v in ref.state_dict().items()}
            model = convert_state_dict(state, config.replace(dtype=dtype))
            del state
            got = C._features(model, x.astype(dtype), tokens)
            del model
        want = C._reference_features(ref, x, tokens, config, tdtype)  # casts ref in place
        diffs[dtype] = [np.abs(g - w).max() for g, w in zip(got, want, strict=True)]
        scales = [np.abs(w).max() for w in want]
        del got, want
        gc.collect()
    for i, tower in enumerate(("image", "text")):
        record(f"open_clip {name}, full size ({preset})", f"{tower} features",
               diffs["float32"][i], diffs["float64"][i], scales[i])  # fmt: skip


def full() -> None:
    _timm_full()
    _open_clip_full("ViT-B-16-quickgelu", "openai_b16")
    _open_clip_full("ViT-B-16", "openclip_b16")


def large() -> None:
    _open_clip_full("ViT-L-14", "openclip_l14")


def render() -> str:
    """The markdown table of every saved group, in GROUPS order."""
    lines = ["| family | output | max abs diff float32 | float64 | relative float32 | float64 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for group in GROUPS:
        path = RESULTS / f"{group}.json"
        if not path.is_file():
            continue
        for r in json.loads(path.read_text())["rows"]:
            lines.append(
                f"| {r['family']} | {r['output']} | {r['float32']:.2g} | {r['float64']:.2g} | "
                f"{r['float32'] / r['scale']:.2g} | {r['float64'] / r['scale']:.2g} |"
            )
    return "\n".join(lines)


def write_doc() -> None:
    """Replace the table between the markers of docs/import.md by :func:`render`'s."""
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    write_text_atomic(DOC, f"{head}{BEGIN}\n{render()}\n{END}{tail}")


def _save(group: str, run) -> None:
    ROWS.clear()
    run()
    versions = {m.__name__: m.__version__ for m in (torch, timm, transformers, open_clip, jax)}
    write_json_atomic(RESULTS / f"{group}.json", {"versions": versions, "rows": list(ROWS)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also the full-size B/16 models")
    parser.add_argument("--large", action="store_true", help="also open_clip ViT-L-14")
    parser.add_argument("--only", action="store_true", help="skip the reduced models")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the docs table from the saved results")  # fmt: skip
    args = parser.parse_args()
    if not args.render:
        for group, run, wanted in (("reduced", reduced, not args.only), ("full", full, args.full),
                                   ("large", large, args.large)):  # fmt: skip
            if wanted:
                _save(group, run)
    write_doc()


if __name__ == "__main__":
    main()
