"""The train command line: help, preset overrides, clear offline error (no training run)."""

from __future__ import annotations

import pytest

from experiments import train as cli


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--model",
        "--preset",
        "--dataset",
        "--data-dir",
        "--epochs",
        "--bf16",
        "--distributed",
        "--lambda-init",
        "--no-download",
        "--workdir",
    ):
        assert option in out


def test_options_override_the_preset():
    args = cli.parse_args(
        [
            "--model",
            "diffvit",
            "--preset",
            "cpu",
            "--depth",
            "2",
            "--lambda-init",
            "schedule",
            "--grad-clip",
            "0",
            "--epochs",
            "3",
            "--bf16",
            "--no-flip",
            "--lr",
            "5e-4",
        ]
    )
    config = cli.build_config(args)
    assert config.model.attention == "diff" and config.model.depth == 2
    assert config.model.lambda_init == "schedule" and config.model.dtype == "bfloat16"
    assert config.grad_clip is None and config.epochs == 3 and config.flip is False
    assert config.learning_rate == 5e-4
    assert config.model.width == 128 and config.batch_size == 128  # from the preset


def test_offline_dataset_exits_with_the_advice(tmp_path):
    with pytest.raises(SystemExit, match="cifar-10-python.tar.gz"):
        cli.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download"])
