"""`diffjax analyse`: outputs, independent re-checks of its numbers, resume, and bad input."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import analysis as an
from diffjax import attacks, verify
from diffjax.checkpoint import load_model, save_model
from diffjax.data import load_dataset
from tests.commandline import diffjax, diffjax_error

# 5 tokens (the synthetic images are 32 × 32); one layer keeps the compile of the command short.
CONFIG = dict(image_size=32, patch_size=16, depth=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for attention in ("diff", "softmax"):
        model = dj.ViT(dj.preset("tiny", attention=attention, **CONFIG), rngs=nnx.Rngs(0))
        save_model(root / attention, model)
    return root


def args(checkpoints, out, *extra):
    return [
        "analyse", f"--config.checkpoint={checkpoints / 'diff'}",
        f"--config.base_checkpoint={checkpoints / 'softmax'}", "--config.dataset=synthetic",
        "--config.num_examples=3", "--config.batch_size=2", "--config.samples=4",
        "--config.pgd_steps=3", "--config.max_iters=30", "--workdir", str(out), *extra,
    ]  # fmt: skip


def test_analyse_writes_checked_results_and_resumes(checkpoints, tmp_path, capsys):
    out = tmp_path / "an"
    summary = diffjax(*args(checkpoints, out))
    files = sorted((out / "examples").glob("*.json"))
    assert [f.name for f in files] == ["000000.json", "000001.json", "000002.json"]
    records = [json.loads(f.read_text()) for f in files]
    assert json.loads((out / "summary.json").read_text()) == summary
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = ea.EventAccumulator(str(out))  # the summary for TensorBoard, layer as the step
    events.Reload()
    tag = "analysis/layers/negative_alignment_frequency"
    assert [(e.step, e.value) for e in events.Scalars(tag)] == [
        (s["layer"], np.float32(s["negative_alignment_frequency"])) for s in summary["layers"]
    ]

    # The summary is what the example files say.
    for layer, s in enumerate(summary["layers"]):
        cos = np.concatenate([np.ravel(r["layers"][layer]["cos"]) for r in records])
        assert s["negative_alignment_frequency"] == pytest.approx(np.mean(cos < 0))
        assert s["lemma1_max_rel_err"] < 1e-10 and s["theorem2_max_rel_err"] < 1e-10
        assert s["theorem1_violations"] == 0 and s["theorem3_agreement"] == 1.0

    # Re-check one exact local Lipschitz value outside the command: NumPy SVD of the Jacobian.
    ds = load_dataset("synthetic", "test")
    with jax.enable_x64(True):
        model = an.with_dtype(load_model(checkpoints / "diff"), "float64")
        image = ds.images[1].astype(np.float64) / 255.0
        u = an.layer_input(model, image[None], 0, "attention_input")[0]
        jac = an.jacobian_matrix(lambda v: an.attention_layer(model, v, 0), u)
        sigma = np.linalg.svd(np.asarray(jac), compute_uv=False)[0]
        logits = np.asarray(model(image[None])[0])
    assert records[1]["attention_lipschitz"][0]["value"] == pytest.approx(sigma, rel=1e-9)
    assert records[1]["prediction"] == int(np.argmax(logits))
    lips = records[1]["logits_lipschitz"]
    assert lips["empirical_pgd"]["value"] <= lips["exact_local"]["value"] * (1 + 1e-2)
    assert {v["kind"] for v in lips.values()} == {
        "exact_local", "empirical_sampling", "empirical_pgd"
    }  # fmt: skip
    d = records[1]["depth"]
    assert np.all(np.asarray(d["stack_lipschitz"]) <= np.asarray(d["product_bound"]) * (1 + 1e-9))

    # Resume: nothing is recomputed, the summary is the same; other settings are refused.
    stamps = [f.stat().st_mtime_ns for f in files]
    assert diffjax(*args(checkpoints, out)) == summary
    assert [f.stat().st_mtime_ns for f in files] == stamps
    other = args(checkpoints, out, "--config.radius=0.01")
    assert "other settings" in diffjax_error(capsys, *other)


def test_analyse_a_vit_alignment_only(checkpoints, tmp_path):
    summary = diffjax(
        "analyse", f"--config.checkpoint={checkpoints / 'softmax'}", "--config.dataset=synthetic",
        "--config.num_examples=2", "--config.row=cls", "--config.skip=lipschitz,empirical,depth",
        "--workdir", str(tmp_path / "vit"),
    )  # fmt: skip
    assert [s["attention"] for s in summary["layers"]] == ["softmax"]
    assert all("lemma1_max_rel_err" not in s for s in summary["layers"])
    assert summary["layers"][0]["cos"]["count"] == 2 * 2  # examples × head pairs, CLS row


def test_analyse_certifies_radii_that_hold(checkpoints, tmp_path):
    """Certified radii by bisection (CROWN-IBP, ℓ∞): positive exactly where the model is right,
    each re-checked by the verifier's margin bounds and by PGD, the curve what they say."""
    ds = load_dataset("synthetic", "test")
    model = load_model(checkpoints / "softmax")
    # A bias toward example 0's class: it is classified right with a clear margin, and the
    # examples of other classes wrong.
    model.head.bias[...] = model.head.bias[...].at[int(ds.labels[0])].add(1.0)
    save_model(tmp_path / "biased", model)
    summary = diffjax(
        "analyse", f"--config.checkpoint={tmp_path / 'biased'}", "--config.dataset=synthetic",
        "--config.num_examples=3", "--config.skip=alignment,lipschitz,empirical,depth",
        "--config.certify=crown-ibp", "--config.certify_hi=0.01", "--config.certify_steps=12",
        "--workdir", str(tmp_path / "cert"),
    )  # fmt: skip
    records = [json.loads(f.read_text()) for f in sorted((tmp_path / "cert/examples").glob("*"))]
    radius = np.asarray([r["certified_radius"] for r in records])
    right = np.asarray([r["prediction"] == r["label"] for r in records])
    assert right[0] and not right.all()
    assert np.all((radius > 0) == right)
    c = summary["certified"]
    assert (c["method"], c["norm"]) == ("crown-ibp", "linf")
    assert c["certified_accuracy"] == [float(np.mean(radius >= e)) for e in c["eps"]]
    images = ds.images[:3][right].astype(np.float64) / 255.0
    labels = np.asarray(ds.labels[:3])[right]
    with jax.enable_x64(True):
        m = an.with_dtype(model, "float64")
        lb = np.asarray(verify.margin_lower_bounds(m, images, labels, radius[right], "linf",
                                                   "crown-ibp"))  # fmt: skip
    assert np.all(lb[np.arange(lb.shape[1]) != labels[:, None]] > 0)
    cfg = attacks.PGDConfig(eps=1.0, norm="linf", steps=40, restarts=3, loss="margin")
    res = attacks.pgd(attacks.model_function(model), images.astype(np.float32), labels,
                      jax.random.key(0), cfg, eps=radius[right].astype(np.float32))  # fmt: skip
    assert not np.asarray(res.success).any()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.certify=deepz"], "certify must be one of ('interval', 'ibp', 'crown-ibp'"),
        (["--config.certify=crown", "--config.certify_norm=l1"], "certify_norm must be one of"),
        (["--config.checkpoint=/nonexistent/run"], "does not exist"),
        (["--config.radius=-1"], "radius"),
        (["--config.skip=everything"], "unknown parts"),
        (["--config.row=9"], "row"),
        (["--config.num_examples=100000"], "exceeds"),
        (["--config.num_exampels=3"], "unknown config field 'num_exampels'"),
        (["--config.num_examples=three"], "num_examples"),
    ],
)
def test_analyse_rejects_bad_input(checkpoints, tmp_path, capsys, extra, message):
    assert message in diffjax_error(capsys, *args(checkpoints, tmp_path / "bad", *extra))


def test_analyse_rejects_a_mismatched_base(checkpoints, tmp_path, capsys):
    other = tmp_path / "deeper"
    save_model(other, dj.ViT(dj.preset("tiny", **{**CONFIG, "depth": 2}), rngs=nnx.Rngs(0)))
    bad = args(checkpoints, tmp_path / "x", f"--config.base_checkpoint={other}")
    assert "depth" in diffjax_error(capsys, *bad)


def test_analyse_help_lists_every_config_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        diffjax("analyse", "--help")
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "--config.checkpoint=''" in out and "--config.radius=0.001" in out
    assert "--workdir" in out and "(default: .)" in out
