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

# Run in a fresh interpreter: `diffjax ARGV` for each ARGV given (a JSON list of them) in turn,
# and after each its exit status and the heavy modules imported so far.
PROBE = """
import json, sys
from diffjax.experiments import cli
for argv in json.loads(sys.argv[1]):
    try:
        cli.run(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    heavy = [m for m in ("jax", "flax", "optax", "torch", "matplotlib") if m in sys.modules]
    print(json.dumps({"argv": argv, "code": code, "heavy": heavy}))
"""


def probe(argvs: list[list[str]]) -> tuple[list[dict], str]:
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"argv"')], (
        run.stderr
    )


SUBCOMMANDS = [["train"], ["attack"], ["analyse"], ["import-vit"], ["convert-clip"],
               ["make-sample"], ["figures"], *(["run", e] for e in cli.EXPERIMENTS)]  # fmt: skip
# Bad input per subcommand: a misspelt (nested) field, ε on the 0–255 scale, a bad value.
ERRORS = [
    ["figures", "--experiment", "nope"],
    ["run", "main", "--config=nope"],              # no such config
    ["attack", "--config=missing/attack.py:pgd"],  # no such file
    ["trian"],                                     # no such subcommand
    ["train", "--config.train.model.dpth=2"],
    ["analyse", "--config.eps=8"],
    ["attack", "--config.eps=0.1"],                # the field is params.eps
    ["attack", "--config.params.eps=8"],
    ["attack", "--config=attack:autoattack", "--config.params.stages=('apgd',)"],
    *(["run", name, "--config.sedd=1"] for name in cli.EXPERIMENTS),
    ["run", "main", "--config.eps=(8,)"],
    ["run", "main", "--config.train.epochs=0"],
    ["run", "language", "--config.lm_train.steps=-1"],
    ["import-vit"],                                # missing arguments
    ["convert-clip", "a.pt", "out", "--preset=nope"],
]  # fmt: skip
JAX_FREE = [["--help"], ["run", "--help"], *([*a, "--help"] for a in SUBCOMMANDS), *ERRORS]


def test_help_and_early_errors_import_no_jax():
    results, stderr = probe(JAX_FREE)
    assert [r["argv"] for r in results] == JAX_FREE, stderr[-2000:]
    for r in results:
        assert r["heavy"] == [], r  # the first command that imported JAX, Flax, Optax or torch
        assert r["code"] == (0 if "--help" in r["argv"] else 2), r
    # one line per bad input naming the cause, never a traceback
    assert "Traceback" not in stderr
    assert stderr.count("error:") == len(ERRORS), stderr


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
