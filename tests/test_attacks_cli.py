"""`diffjax attack` end to end on a tiny saved model and synthetic data: results file, summary
recomputed from the records, resume after an interruption, clear errors."""

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import attacks
from diffjax.checkpoint import save_model
from diffjax.records import seal, unseal
from tests.commandline import diffjax, diffjax_error


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = dj.ViT(dj.preset("tiny", image_size=32, patch_size=8), rngs=nnx.Rngs(0))
    return str(save_model(tmp_path_factory.mktemp("model") / "vit", model))


def args(checkpoint, workdir, *extra, attack="pgd"):
    return ["attack", f"--config=attack:{attack}", f"--config.checkpoint={checkpoint}",
            f"--config.params.eps={8 / 255}", "--config.params.steps=2", "--config.num_examples=8",
            "--config.batch_size=4", "--config.dataset=synthetic", "--workdir", str(workdir),
            *extra]  # fmt: skip


def test_attack_command_writes_records_and_resumes(checkpoint, tmp_path, capsys):
    out = diffjax(*args(checkpoint, tmp_path / "full"))
    saved = json.loads((tmp_path / "full" / "attack.json").read_text())
    assert saved == json.loads(json.dumps(out)) and saved["status"] == "complete"
    records = saved["records"]
    assert [r["index"] for r in records] == list(range(8))
    assert saved["settings"]["config"]["eps"] == pytest.approx(8 / 255)
    assert all(r["linf"] <= 8 / 255 + 1e-6 for r in records)
    assert all(r["success"] == (r["adv_pred"] != r["label"]) for r in records)
    r = {k: np.array([rec[k] for rec in records]) for k in records[0]}
    assert r["valid"].all()
    want = attacks.summarize(
        r["label"], r["clean_pred"], r["adv_pred"], r["linf"], r["l2"], r["model_calls"]
    )
    assert saved["summary"] == json.loads(json.dumps(want.as_dict()))
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = ea.EventAccumulator(str(tmp_path / "full"))  # the summary for TensorBoard
    events.Reload()
    assert [e.value for e in events.Scalars("attack/pgd/asr")] == [np.float32(want.asr)]

    # Interrupt after the first batch: a partial file with 4 records; --resume completes it to
    # exactly the records of the uninterrupted run (per-example keys come from the index).
    (tmp_path / "resumed").mkdir()
    partial = dict(unseal(saved, "full"), status="partial", batches_done=1, records=records[:4])
    resumed_file = tmp_path / "resumed" / "attack.json"
    resumed_file.write_text(json.dumps(seal(partial)))
    with pytest.raises(SystemExit, match="--resume"):
        diffjax(*args(checkpoint, tmp_path / "resumed"))
    # One digit of one record changed (what one flipped bit also does): refused, not resumed.
    text = resumed_file.read_text()
    edited = re.sub(r'"label": (\d)', lambda m: f'"label": {(int(m[1]) + 1) % 10}', text, count=1)
    assert edited != text
    resumed_file.write_text(edited)
    with pytest.raises(SystemExit, match="cannot resume.*attack.json.*sha256"):
        diffjax(*args(checkpoint, tmp_path / "resumed", "--resume"))
    resumed_file.write_text(text)
    resumed = diffjax(*args(checkpoint, tmp_path / "resumed", "--resume"))
    assert resumed["status"] == "complete" and resumed["records"] == records
    with pytest.raises(SystemExit, match="other settings"):
        diffjax(*args(checkpoint, tmp_path / "resumed", "--resume", "--config.seed=1"))
    # --overwrite starts again from nothing and gives the same records.
    again = diffjax(*args(checkpoint, tmp_path / "resumed", "--overwrite"))
    assert again["records"] == records


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.params.eps=one"], "eps"),
        (["--config.params.eps=-0.1"], "eps"),
        (["--config.checkpoint=/nonexistent/model"], "/nonexistent/model"),
        (["--config.params.norm=l3"], "norm"),
        (["--resume", "--overwrite"], "exclude each other"),
        (["--config.num_examples=-1"], "num_examples"),
        (["--config.params.steps=0"], "steps"),
        (["--config=attack:apgd-ce", "--config.params.targeted=true"], "targeted"),
    ],
)
def test_attack_command_rejects_bad_input(checkpoint, tmp_path, capsys, extra, message):
    assert message in diffjax_error(capsys, *args(checkpoint, tmp_path / "x", *extra))


def test_attack_command_needs_a_checkpoint(tmp_path, capsys):
    err = diffjax_error(capsys, "attack", "--workdir", str(tmp_path))
    assert "config.checkpoint is required" in err


def test_batch_size_must_split_over_the_devices(checkpoint, tmp_path, capsys):
    if jax.device_count() == 1:
        pytest.skip("one device: every batch size splits")
    bad = args(checkpoint, tmp_path / "x", f"--config.batch_size={jax.device_count() + 1}")
    assert "multiple" in diffjax_error(capsys, *bad)


def test_every_attack_has_a_config_and_the_help_lists_its_fields(capsys):
    for name in attacks.ATTACKS:
        with pytest.raises(SystemExit) as e:
            diffjax("attack", f"--config=attack:{name}", "--help")
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config.params.eps=0.01568" in out and "--config.params.restarts=1" in out
