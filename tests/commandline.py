"""Run the ``diffjax`` command line in-process, as a user would type it."""

import pytest

from diffjax.experiments import cli

FLAGS = ("--quiet", "--no-compilation-cache")


def diffjax(*argv):
    """``diffjax ARGV…`` (progress bars and the compilation cache off where the subcommand
    has them); its result."""
    if argv[0] not in ("run", *cli.CONFIGURED):
        return cli.run(list(argv))
    head = list(argv[:2]) if argv[0] == "run" else list(argv[:1])
    return cli.run([*head, *FLAGS, *argv[len(head):]])


def diffjax_error(capsys, *argv) -> str:
    """``diffjax ARGV…`` that must fail with exit status 2; its error message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        diffjax(*argv)
    assert e.value.code == 2
    return capsys.readouterr().err
