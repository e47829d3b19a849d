"""An open_clip CLIP from its unmodified state dict through the command line: `diffjax
convert-clip` (sizes read from the weights), `diffjax analyse` on the converted directory (the
image tower through the zero-shot head; its logits are open_clip's own cosine similarities), and
the CLIP experiment evaluating the converted checkpoint instead of training."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")

from diffjax.clip import load_clip  # noqa: E402
from diffjax.data import load_dataset  # noqa: E402
from tests.commandline import diffjax, diffjax_error  # noqa: E402


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory):
    """open_clip's ViT-B-16 layout (exact GELU) at 32 px: one block per tower, image width 32
    with 2 heads (paired as (0, 1)), text width 32 with 4 heads; random weights drawn anew,
    saved as open_clip's hub file open_clip_model.safetensors."""
    cfg = open_clip.get_model_config("ViT-B-16")
    vision = dict(cfg["vision_cfg"], layers=1, width=32, head_width=16, image_size=32)
    text = dict(cfg["text_cfg"], layers=1, width=32, heads=4)
    ref = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            r = torch.randn(p.shape, generator=g)
            norm = name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                                  "ln_final.weight"))  # fmt: skip
            p.copy_(1 + 0.2 * r if norm else r * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    root = tmp_path_factory.mktemp("open_clip")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    safetensors_torch.save_file(sd, root / "open_clip_model.safetensors")
    return ref.eval(), root / "open_clip_model.safetensors"


def _open_clip_cosines(ref, images, class_names, prompt):
    """open_clip's float64 cosine similarities [B, classes] of [0, 1] NHWC images."""
    mean, std = np.asarray(open_clip.OPENAI_DATASET_MEAN), np.asarray(open_clip.OPENAI_DATASET_STD)
    x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
    tokens = open_clip.get_tokenizer("ViT-B-16")([prompt.format(c) for c in class_names])
    with torch.no_grad():
        img, txt = ref.double().encode_image(x), ref.double().encode_text(tokens)
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return (img @ txt.T).numpy()


def test_convert_then_analyse_and_compare(open_clip_model, tmp_path, capsys):
    ref, weights = open_clip_model
    out = tmp_path / "clip"
    convert = ("convert-clip", str(weights), str(tmp_path / "x"), "--preset", "openclip_b16")
    err = diffjax_error(capsys, *convert, "--vision-heads", "2", "--text-heads", "4")
    assert "does not have the sizes of preset openclip_b16" in err and "vision_width 768" in err
    record = diffjax("convert-clip", str(weights), str(out), "--preset", "openclip_b16",
                     "--vision-heads", "2", "--text-heads", "4",
                     "--sizes-from-weights")  # fmt: skip
    assert record["layout"] == "openai" and record["preset"] == "openclip_b16"
    assert record["sizes_from_weights"]
    c = load_clip(out).config
    assert (c.image_size, c.patch_size, c.vision_width, c.vision_layers, c.vision_heads) == (
        32, 16, 32, 1, 2)  # fmt: skip
    assert (c.text_width, c.text_layers, c.embed_dim, c.vision_activation) == (32, 1, 16, "gelu")
    convert = (*convert, "--sizes-from-weights")
    err = diffjax_error(capsys, *convert, "--text-heads", "4")
    assert "the vision tower is 32 wide, the preset's 768: give the vision head count" in err
    err = diffjax_error(capsys, *convert, "--vision-heads", "2", "--text-heads", "3")
    assert "text width 32 is not divisible by 3 heads" in err

    names = [f"thing number {i}" for i in range(10)]
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(names[:9]))
    analyse = ("analyse", f"--config.checkpoint={out}", f"--config.class_names={names_file}")
    err = diffjax_error(capsys, *analyse, "--config.dataset=synthetic", "--workdir", str(tmp_path))
    assert "names.txt has 9 names, the data 10 classes" in err
    names_file.write_text("\n".join(names))
    summary = diffjax(
        *analyse, "--config.dataset=synthetic",
        "--config.num_examples=2", "--config.batch_size=2", "--config.max_iters=30",
        "--config.skip=empirical,depth", "--workdir", str(tmp_path / "an"),
    )  # fmt: skip
    assert summary["settings"]["prompt"] == "a photo of a {}."
    ds = load_dataset("synthetic", "test")
    want = _open_clip_cosines(ref, ds.images[:2] / 255.0, names, "a photo of a {}.")
    for i in range(2):
        rec = json.loads((tmp_path / "an" / "examples" / f"{i:06d}.json").read_text())
        np.testing.assert_allclose(rec["logits"], want[i], rtol=0, atol=1e-12)
    layer = summary["layers"][0]
    assert layer["attention"] == "softmax" and layer["cos"]["count"] > 0
    assert summary["attention_lipschitz"][0]["value"]["min"] > 0
    assert summary["logits_lipschitz"]["exact_local"]["min"] > 0

    result = diffjax("run", "clip_compare", "--config=clip_compare:mini",
                     "--config.models=clip", f"--config.clip_checkpoint={out}",
                     "--workdir", str(tmp_path / "cc"))  # fmt: skip
    (name, res), = result["models"].items()
    assert name == "clip_seed0" and res["training"] is None
    assert 0 <= res["zeroshot_accuracy"] <= 1 and len(res["layers"]) == 1
    assert not (tmp_path / "cc" / "runs").exists()  # evaluated, nothing trained
