"""`diffjax import-vit` end to end: a tiny random timm ViT written to .safetensors is imported,
then `diffjax analyse` and `diffjax attack` run on it; the analysed logits are timm's own."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

from diffjax.checkpoint import load_model  # noqa: E402
from diffjax.data import load_dataset  # noqa: E402
from tests.commandline import diffjax, diffjax_error  # noqa: E402


@pytest.fixture(scope="module")
def timm_model(tmp_path_factory):
    """vit_tiny_patch16_224's layout at 32 px, width 16, one block, 2 heads (paired as (0, 1)),
    10 classes, random weights, saved as the hub's model.safetensors."""
    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16,
                            embed_dim=16, depth=1, num_heads=2, num_classes=10)  # fmt: skip
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    safetensors_torch.save_file(sd, root / "model.safetensors")
    return ref.eval(), root / "model.safetensors"


def test_import_then_analyse_and_attack(timm_model, tmp_path, capsys):
    ref, weights = timm_model
    out = tmp_path / "vit"
    record = diffjax(
        "import-vit", str(weights), str(out), "--num-heads", "2", "--assume-imagenet-stats"
    )
    assert record["layout"] == "timm" and record["config"]["num_heads"] == 2
    assert load_model(out).config.layer_norm_eps == 1e-6
    assert "--overwrite" in diffjax_error(capsys, "import-vit", str(weights), str(out))

    summary = diffjax(
        "analyse", f"--config.checkpoint={out}", "--config.dataset=synthetic",
        "--config.num_examples=2", "--config.batch_size=2", "--config.samples=4",
        "--config.pgd_steps=3", "--config.max_iters=30", "--config.skip=depth",
        "--workdir", str(tmp_path / "an"),
    )  # fmt: skip
    # The analysed model is timm's: its logits, through timm's own forward pass (float64).
    ds = load_dataset("synthetic", "test")
    x = ds.images[:2].astype(np.float64) / 255.0
    x = (x - np.asarray(timm.data.IMAGENET_DEFAULT_MEAN)) / np.asarray(
        timm.data.IMAGENET_DEFAULT_STD
    )
    with torch.no_grad():
        want = ref.double()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    for i in range(2):
        rec = json.loads((tmp_path / "an" / "examples" / f"{i:06d}.json").read_text())
        np.testing.assert_allclose(rec["logits"], want[i], rtol=0, atol=1e-12)
    layer = summary["layers"][0]
    assert layer["attention"] == "softmax" and layer["cos"]["count"] > 0
    assert summary["attention_lipschitz"][0]["value"]["min"] > 0
    # The exact local σmax is at least what sampling and PGD find.
    lips = summary["logits_lipschitz"]
    assert lips["empirical_pgd_over_exact"]["max"] <= 1 + 1e-6
    assert lips["empirical_sampling_over_exact"]["max"] <= 1 + 1e-6

    result = diffjax(
        "attack", "--config=attack:pgd", f"--config.checkpoint={out}",
        "--config.dataset=synthetic", "--config.num_examples=4", "--config.batch_size=4",
        "--config.params.steps=3", "--workdir", str(tmp_path / "atk"),
    )  # fmt: skip
    assert (tmp_path / "atk" / "attack.json").exists() and result


def test_import_errors(timm_model, tmp_path, capsys):
    _, weights = timm_model
    err = diffjax_error(capsys, "import-vit", str(weights), str(tmp_path / "a"))
    assert "--num-heads is required" in err
    hf = tmp_path / "config.json"
    hf.write_text(json.dumps({"num_attention_heads": 2, "hidden_act": "silu"}))
    err = diffjax_error(capsys, "import-vit", str(weights), str(tmp_path / "b"),
                        "--model-config", str(hf))  # fmt: skip
    assert "hidden_act 'silu'" in err
    err = diffjax_error(capsys, "import-vit", str(weights), str(tmp_path / "c"), "--num-heads", "3",
                        "--assume-imagenet-stats")  # fmt: skip
    assert "not divisible by num_heads 3" in err
    # timm weights alone do not say their statistics (a mean/std 0.5 model would be off).
    err = diffjax_error(capsys, "import-vit", str(weights), str(tmp_path / "d"), "--num-heads", "2")
    assert "mean/std are not in the weights" in err and "--assume-imagenet-stats" in err
    err = diffjax_error(capsys, "import-vit", str(weights), str(tmp_path / "e"), "--num-heads", "2",
                        "--assume-imagenet-stats", "--mean", "0.5", "0.5", "0.5")  # fmt: skip
    assert "contradicts --mean/--std" in err
    # A flag contradicting the checkpoint's config.json is refused, naming both values.
    hf.write_text(json.dumps({"num_attention_heads": 2, "hidden_act": "gelu"}))
    err = diffjax_error(capsys, "import-vit", str(weights), str(tmp_path / "f"), "--num-heads", "4",
                        "--model-config", str(hf), "--assume-imagenet-stats")  # fmt: skip
    assert "num_heads: flag 4, file 2" in err
