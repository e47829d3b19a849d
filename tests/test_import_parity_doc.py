"""The parity table of docs/import.md is the one ``benchmarks/import_parity.py`` renders from
its saved rows (results/import_parity/*.json), not numbers pasted by hand."""

import pytest

for name in ("torch", "timm", "transformers", "open_clip"):
    pytest.importorskip(name)

from benchmarks import import_parity as P  # noqa: E402


def test_docs_table_is_the_saved_results():
    text = P.DOC.read_text()
    assert text.count(P.BEGIN) == 1 and text.count(P.END) == 1
    table = text.split(P.BEGIN)[1].split(P.END)[0].strip()
    assert (P.RESULTS / "reduced.json").is_file()
    assert table == P.render()
    # Every row of the saved results is within the tests' tolerances.
    for line in table.splitlines()[2:]:
        rel32, rel64 = (float(x) for x in line.strip("| ").split(" | ")[-2:])
        assert rel32 < 1e-5, line
        assert rel64 < 1e-12 or "resampled" in line, line
