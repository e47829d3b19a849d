"""The fault table of docs/reliability.md: tries per kind of fault, recorded by the fault tests.

Each fault test module keeps a :class:`Outcomes` and the fixture of :func:`table_fixture`; with
``DIFFJAX_FAULT_TABLE=<folder>`` each module writes its counts to ``<folder>/<module>.json``.
The saved counts live in ``results/faults/``; ``python -m tests.fault_table results/faults``
prints the Markdown table, and ``tests/test_fault_table.py`` checks that the doc shows exactly
that table. Reproduce it with

    DIFFJAX_FAULT_TABLE=results/faults python -m pytest tests/test_faults.py \
        tests/test_hostile_files.py
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import sys

import pytest

COLUMNS = ("tries", "recovered_exactly", "clear_error", "silent_wrong", "unbounded", "data_lost")
HEADERS = ("fault kind", "tries", "recovered exactly", "clear error", "silent wrong", "unbounded",
           "data lost")  # fmt: skip
# The modules that record faults, in the order of the table.
MODULES = ("test_faults", "test_hostile_files", "test_stopping")


class Outcomes:
    """Counts per kind of fault. Only the first two outcomes are recorded: a silent wrong result,
    an unbounded allocation or lost data fails the test that would record it, so those columns
    stay 0."""

    def __init__(self):
        self.counts: dict[str, list[int]] = collections.defaultdict(lambda: [0] * len(COLUMNS))

    def __call__(self, kind: str, recovered: bool) -> None:
        self.counts[kind][0] += 1
        self.counts[kind][1 if recovered else 2] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(zip(COLUMNS, row, strict=True)) for k, row in self.counts.items()}


def table_fixture(outcomes: Outcomes, module: str):
    """A module-scoped autouse fixture writing ``outcomes`` to ``$DIFFJAX_FAULT_TABLE``."""

    @pytest.fixture(scope="module", autouse=True)
    def fault_table():
        yield
        folder = os.environ.get("DIFFJAX_FAULT_TABLE")
        if folder:
            path = pathlib.Path(folder) / f"{module}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(outcomes.as_dict(), indent=2) + "\n")

    return fault_table


def markdown(folder: str | os.PathLike) -> str:
    """The Markdown table of the counts saved in ``folder``, with an **all** row."""
    rows = {}
    for module in MODULES:
        rows.update(json.loads((pathlib.Path(folder) / f"{module}.json").read_text()))
    total = [sum(r[c] for r in rows.values()) for c in COLUMNS]
    lines = ["| " + " | ".join(HEADERS) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
    lines += [f"| {k} | " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for k, r in rows.items()]
    lines.append("| **all** | " + " | ".join(f"**{n}**" for n in total) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(sys.argv[1]), end="")
