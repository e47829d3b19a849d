"""The command line answers --help and config errors without importing JAX, and every example
command printed by a --help text parses and passes the config checks."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from diffjax.experiments import cli

# Run in a fresh interpreter: (modules imported, CPU seconds) after `diffjax ARGV`.
PROBE = """
import json, sys, time
from diffjax.experiments import cli
try:
    cli.run(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("jax", "flax", "optax", "matplotlib") if m in sys.modules]
print(json.dumps({"code": code, "cpu_s": time.process_time(), "heavy": heavy}))
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["figures", "--help"], 0),
    (["figures", "--experiment", "nope"], 2),
    (["run", "main", "--config=nope"], 2),              # no such config
    (["attack", "--config=missing/attack.py:pgd"], 2),  # no such file
    (["trian"], 2),                                     # no such subcommand
])  # fmt: skip
def test_help_and_early_errors_import_no_jax(argv, code):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    probe = json.loads(out.splitlines()[-1])
    assert probe["code"] == code and probe["heavy"] == []
    # CPU time, not wall time: the answer costs the interpreter's start and argparse, and a
    # loaded machine must not make the test flaky.
    assert probe["cpu_s"] < 2.0, probe


def _examples() -> list[str]:
    """Every ``diffjax …`` command line in the help texts (the top level's and each
    subcommand's description), without its trailing comment."""
    texts = [cli.__doc__] + [cli._doc(m) for m in (*cli.EXPERIMENTS, *cli.CONFIGURED,
                                                   *cli.MODULES.values(), "figures")]  # fmt: skip
    lines = []
    for text in texts:
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            if line.strip().startswith("diffjax "):
                lines.append(line.strip())
    return sorted(set(lines))


def test_help_examples_are_found():
    examples = _examples()
    assert len(examples) > 20
    assert any("--config.params.eps=" in e for e in examples)


@pytest.mark.parametrize("example", _examples())
def test_every_help_example_parses_and_passes_the_config_checks(example):
    argv = shlex.split(example, comments=True)[1:]
    args, config = cli.parse(argv)  # raises (ConfigError, SystemExit) on a bad example
    if config is not None:
        assert config.experiment == (args.experiment if args.command == "run" else args.command)
