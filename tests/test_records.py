"""Result records: resumable parts, atomic files, statistics against textbook values."""

import json
import math

import numpy as np
import pytest

from diffjax import records


def test_cached_computes_once_and_rereads(tmp_path):
    calls = []
    path = tmp_path / "part.json"
    first = records.cached(path, lambda: calls.append(1) or {"asr": 0.5})
    second = records.cached(path, lambda: calls.append(1) or {"asr": 0.9})
    assert first == second == {"asr": 0.5} and len(calls) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_corrupt_or_missing_result_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"asr": 0.')
    with pytest.raises(ValueError, match="corrupt result file"):
        records.cached(bad, lambda: {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        records.read_json(tmp_path / "none.json")


def test_csv_has_union_of_columns(tmp_path):
    path = tmp_path / "s.csv"
    records.write_csv_atomic(path, [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert path.read_text() == "a,b,c\n1,2,\n3,,4\n"


def test_mean_std_ci_matches_t_table():
    out = records.mean_std_ci([1.0, 2.0, 3.0])
    assert out["mean"] == 2.0 and out["std"] == 1.0 and out["n"] == 3
    # t_{0.975, 2} = 4.302653 (standard table); half-width = t · s / √n.
    assert out["ci"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    one = records.mean_std_ci([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["ci"])
    with pytest.raises(ValueError):
        records.mean_std_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        records.mean_std_ci([1.0, np.nan])


def test_environment_is_json_serialisable():
    env = records.environment()
    assert env["device_count"] >= 1 and env["packages"]["jax"]
    json.dumps(env)
