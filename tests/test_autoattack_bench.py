"""The AutoAttack benchmark's bookkeeping, against hand-computed values: row specs, the robust /
fooled-only-by-one accounting, ratios, per-example pass counts and the tables of its JSON."""

import json

import pytest

from benchmarks import autoattack_bench as bench

# Five examples; example 4 is misclassified clean, so never robust whatever the attacks give.
LABELS = [0, 1, 2, 3, 4]
CLEAN = [0, 1, 2, 3, 0]
DIFFJAX = [0, 9, 2, 9, 4]  # robust: 0, 2
REFERENCE = [9, 9, 2, 3, 4]  # robust: 2, 3
# Wilson 95 % of 2/5: center (0.4 + z²/10) / (1 + z²/5), half-width z·√(0.048 + z²/100) / (…).
WILSON_2_OF_5 = (0.117621, 0.769275)


def test_parse_row():
    assert bench.parse_row("autoattack:linf@8/255") == {
        "attack": "autoattack", "norm": "linf", "eps": 8 / 255, "eps_label": "8/255"
    }  # fmt: skip
    assert bench.parse_row("fab-t:l2@0.5")["eps"] == 0.5
    for bad in ("autoattack@8/255", "pgd:linf@8/255", "square:l1@0.5", "square:linf"):
        with pytest.raises(ValueError, match="ATTACK:NORM@EPS"):
            bench.parse_row(bad)
    for spec in bench.ROWS:
        bench.parse_row(spec)


def test_compare_counts_robust_and_fooled_only_by_one_side():
    c = bench.compare(LABELS, CLEAN, DIFFJAX, REFERENCE)
    assert (c["n"], c["clean_correct"], c["diffjax_robust"], c["reference_robust"]) == (5, 4, 2, 2)
    assert c["fooled_only_by_diffjax"] == 1  # example 3
    assert c["fooled_only_by_reference"] == 1  # example 0
    assert c["diffjax_ci"] == pytest.approx(WILSON_2_OF_5, abs=1e-6)
    assert c["reference_ci"] == pytest.approx(WILSON_2_OF_5, abs=1e-6)


def test_ratios_and_per_example():
    row = {"diffjax_cold_s": 30.0, "diffjax_cached_s": 12.0, "diffjax_warm_s": 6.0,
           "reference_s": 60.0}  # fmt: skip
    assert bench.ratios(row) == {"ratio_cold": 0.5, "ratio_cached": 0.2, "ratio_warm": 0.1}
    assert bench.per_example(909, 9) == 101
    assert bench.per_example(0, 0) is None  # a stage nothing reached


def test_tables_come_from_the_json(tmp_path, capsys):
    row = {**bench.parse_row("autoattack:linf@8/255"), "diffjax_cold_s": 30.0,
           "diffjax_cached_s": 12.0, "diffjax_warm_s": 6.0, "diffjax_compile_s": 24.0,
           "diffjax_cached_compile_s": 3.0, "reference_s": 60.0}  # fmt: skip
    row = {**row, **bench.compare(LABELS, CLEAN, DIFFJAX, REFERENCE)}
    row.update(bench.ratios(row))
    stage = {"stage": "fab-t", "diffjax_examples": 3, "official_examples": None,
             "diffjax_cold_s": 2.0, "diffjax_warm_s": 1.0, "compile_s": 1.5, "trace_s": 0.25,
             "lower_s": 0.25, "backend_s": 1.0, "programs": 7,
             "programs_by_function": {"jit(_stage_init)": [1, 0.25],
                                      "jit(_stage_segment)": [3, 0.75],
                                      "jit(isfinite)": [2, 0.03], "jit(stage)": [1, 0.01]},
             "diffjax_calls_per_example": 1800.0, "official_s": None,
             "official_forward_per_example": None, "official_backward_per_example": None,
             "diffjax_fooled": 1, "official_fooled": None}  # fmt: skip
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"meta": {"reference": "official"}, "rows": [row],
                                "profile": [stage]}))  # fmt: skip
    bench.main(["--table", str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| attack |") and "| official |" in lines[0]
    assert lines[2] == (
        "| autoattack linf ε=8/255 | 30.0 s (24.0 s) | 12.0 s (3.0 s) | 6.0 s | 60.0 s | 0.500 | "
        "0.200 | 0.100 | 0.400 [0.118, 0.769] | 0.400 [0.118, 0.769] | 1 | 1 |"
    )
    assert lines[5] == (
        "| fab-t | 3 / – | 2.00 s | 1.00 s | 1.50 s (0.25 + 0.25 + 1.00) | "
        "7 (jit(_stage_segment) 3: 0.75 s; jit(_stage_init) 1: 0.25 s; other 3: 0.04 s) | 1800.0 | "
        "– | – / – | 1 / – |"
    )


def test_counting_model_counts_examples_per_pass_and_stage():
    torch = pytest.importorskip("torch")
    counted = bench.CountingModel(torch.nn.Linear(2, 3))
    x = torch.ones(4, 2)
    counted(x)  # outside a stage (the official code's checks): not counted
    counted.stage = "apgd-ce"
    with torch.no_grad():
        counted(x)
    out = counted(x.clone().requires_grad_())
    out.sum().backward(retain_graph=True)
    out[:, 0].sum().backward()  # a second backward through the same forward (FAB's Jacobian)
    counted.stage = "square"
    counted(x[:1])
    assert counted.counts == {"apgd-ce": {"forward": 8, "backward": 8},
                              "square": {"forward": 1, "backward": 0}}  # fmt: skip


def test_a_missing_reference_is_skipped(monkeypatch, capsys):
    monkeypatch.setattr(bench, "reference_available", lambda reference: False)
    assert bench.main(["--reference", "official", "--num-examples", "4"]) == {}
    assert "not installed" in capsys.readouterr().out
