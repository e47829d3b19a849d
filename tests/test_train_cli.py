"""`diffjax train`: help, config overrides reach the run, clear offline error."""

from __future__ import annotations

import json

import pytest

from diffjax.experiments import configs
from diffjax.experiments.configs import recipes
from tests.commandline import diffjax, diffjax_error


def test_help_lists_every_option_and_every_training_field(capsys):
    with pytest.raises(SystemExit) as e:
        diffjax("train", "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--workdir", "--data-dir", "--offline", "--distributed",
                   "--compilation-cache", "--no-compilation-cache", "--quiet"):  # fmt: skip
        assert option in out
    for field, value in configs.flat(configs.load("train:cpu")):
        assert f"--config.{field}={value!r}" in out


def test_overrides_reach_the_validated_config():
    c = configs.load("train:cpu", ["--config.train.model.attention=diff",
                                   "--config.train.model.depth=2",
                                   "--config.train.model.lambda_init=schedule",
                                   "--config.train.epochs=3", "--config.train.flip=false",
                                   "--config.train.model.dtype=bfloat16",
                                   "--config.train.learning_rate=5e-4"])  # fmt: skip
    config = recipes.train_config(c.train)
    assert config.model.attention == "diff" and config.model.depth == 2
    assert config.model.lambda_init == "schedule" and config.model.dtype == "bfloat16"
    assert config.epochs == 3 and config.flip is False and config.learning_rate == 5e-4
    # The rest is the cpu recipe's.
    assert config == recipes.train_config(recipes.training("cpu")).replace(
        epochs=3, flip=False, learning_rate=5e-4,
        model=config.model)  # fmt: skip


def test_a_mini_training_run_writes_the_resolved_config(tmp_path):
    summary = diffjax(
        "train",
        "--config=train:mini",
        "--config.train.epochs=1",
        "--config.train.model.attention=diff",
        "--workdir",
        str(tmp_path),
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["model"]["attention"] == "diff"
    assert summary["steps"] == 128 // 32


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.train.model.lambda_init=high"], "lambda_init"),
        (["--config.train.epochs=0"], "epochs"),
        (["--config.train.model.width=65"], "num_heads"),
        (["--config.image_size=64"], "tfds"),
    ],
)
def test_bad_training_configs_name_the_field(tmp_path, capsys, extra, message):
    err = diffjax_error(capsys, "train", "--config=train:mini", "--workdir", str(tmp_path),
                        *extra)  # fmt: skip
    assert message in err


def test_offline_dataset_exits_with_the_advice(tmp_path, capsys):
    err = diffjax_error(capsys, "train", "--config=train:cpu", "--data-dir", str(tmp_path),
                        "--offline", "--workdir", str(tmp_path / "run"))  # fmt: skip
    assert "cifar-10-python.tar.gz" in err


def test_a_config_of_another_experiment_is_refused(tmp_path, capsys):
    err = diffjax_error(capsys, "train", "--config=asr_table:mini", "--workdir", str(tmp_path))
    assert "not of 'train'" in err
