"""End-to-end test of ``python -m experiments.attack`` on a tiny saved model and synthetic data:
results file, summary recomputed from the records, resume after an interruption, clear errors."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import attacks
from diffjax.checkpoint import CheckpointError, save_model
from experiments import attack as cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = dj.ViT(dj.preset("tiny", image_size=32, patch_size=8), rngs=nnx.Rngs(0))
    return str(save_model(tmp_path_factory.mktemp("model") / "vit", model))


def run(checkpoint, output, *extra):
    flags = "--attack pgd --eps 8/255 --steps 2 --num-examples 8 --batch-size 4".split()
    return cli.main(["--checkpoint", checkpoint, "--output", str(output), *flags, *extra])


def test_attack_command_writes_records_and_resumes(checkpoint, tmp_path):
    out = run(checkpoint, tmp_path / "full.json")
    saved = json.loads((tmp_path / "full.json").read_text())
    assert saved == json.loads(json.dumps(out)) and saved["status"] == "complete"
    records = saved["records"]
    assert [r["index"] for r in records] == list(range(8))
    assert saved["settings"]["config"]["eps"] == pytest.approx(8 / 255)
    assert all(r["linf"] <= 8 / 255 + 1e-6 for r in records)
    assert all(r["success"] == (r["adv_pred"] != r["label"]) for r in records)
    r = {k: np.array([rec[k] for rec in records]) for k in records[0]}
    want = attacks.summarize(
        r["label"], r["clean_pred"], r["adv_pred"], r["linf"], r["l2"], r["model_calls"]
    )
    assert saved["summary"] == json.loads(json.dumps(want.as_dict()))

    # Interrupt after the first batch: a partial file with 4 records; --resume completes it to
    # exactly the records of the uninterrupted run (per-example keys come from the index).
    partial = dict(saved, status="partial", batches_done=1, records=records[:4])
    (tmp_path / "resumed.json").write_text(json.dumps(partial))
    with pytest.raises(SystemExit, match="--resume"):
        run(checkpoint, tmp_path / "resumed.json")
    resumed = run(checkpoint, tmp_path / "resumed.json", "--resume")
    assert resumed["status"] == "complete" and resumed["records"] == records
    with pytest.raises(SystemExit, match="other settings"):
        run(checkpoint, tmp_path / "resumed.json", "--resume", "--seed", "1")


def test_attack_command_rejects_bad_input(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(checkpoint, tmp_path / "x.json", "--eps", "one/255")
    assert "not a number or fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(checkpoint, tmp_path / "x.json", "--eps", "-1/255")
    if jax.device_count() > 1:
        with pytest.raises(SystemExit, match="multiple"):
            run(checkpoint, tmp_path / "x.json", "--batch-size", str(jax.device_count() + 1))
    with pytest.raises(CheckpointError):
        run(str(tmp_path / "missing"), tmp_path / "x.json")
    with pytest.raises(SystemExit, match="square"):
        run(checkpoint, tmp_path / "x.json", "--attack", "square", "--norm", "l2")


def test_eps_fractions():
    assert cli.parse_eps("4/255") == 4 / 255
    assert cli.parse_eps(" 0.5 ") == 0.5


def test_help_lists_every_attack(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in cli.ATTACKS)
