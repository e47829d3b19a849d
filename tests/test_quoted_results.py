"""Numbers the README and REPRODUCTION.md quote are the saved results, formatted by the code.

The README's main-job table is ``results/main_embedded/results.json`` (the output of the
README's first command, ``diffjax run main``, copied from ``results/main/embedded/``) printed by
the main job's own ``summary_table``. Rerunning the main job takes minutes on a 2-core CPU, too
long for the suite; instead the saved results must be of the config the code resolves today,
so a change of the recipe or the job's settings fails here until the results are regenerated:

    diffjax run main --workdir W && cp W/results/main/embedded/results.json results/main_embedded/
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib

from diffjax import records
from diffjax.config import OPTIONAL_FIELDS, OPTIONAL_VIT_FIELDS, TrainConfig
from diffjax.experiments import certified, configs, main

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN = ROOT / "results" / "main_embedded" / "results.json"


def test_readme_main_table_is_the_printed_summary_of_the_saved_results():
    table = main.summary_table(records.read_json(MAIN))
    for page in ("README.md", "experiments/README.md"):
        assert f"```\n{table}\n```" in (ROOT / page).read_text(), page


def test_saved_main_results_are_of_the_default_config():
    saved = records.read_json(MAIN)
    assert saved["experiment"] == "main" and saved["preset"] == "embedded"
    current = configs.to_dict(configs.load("main"))
    # Model switches added after the results were written, at their defaults, change nothing
    # (the same rule as ViTConfig.to_dict and the run hashes).
    model = current["train"]["model"]
    for name, default in OPTIONAL_VIT_FIELDS.items():
        if name not in saved["config"]["train"]["model"] and model.get(name) == default:
            del model[name]
    # So do training fields added after them (TrainConfig.OPTIONAL_FIELDS), at their defaults.
    train, defaults = current["train"], {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in OPTIONAL_FIELDS:
        if name not in saved["config"]["train"] and train.get(name) == defaults[name]:
            del train[name]
    assert saved["config"] == current


def test_certified_tables_and_row_13_are_the_saved_results():
    """docs/certified.md holds the certified experiment's tables as the code renders them from
    results/certified/cpu/, and REPRODUCTION.md row 13 its comparisons and wall time."""
    saved = records.read_json(ROOT / "results" / "certified" / "cpu" / "results.json")
    assert saved["config"] == configs.to_dict(configs.load("certified:cpu"))
    assert certified.report(saved) in (ROOT / "docs" / "certified.md").read_text()
    row = next(line for line in (ROOT / "REPRODUCTION.md").read_text().splitlines()
               if line.startswith("| 13 |"))  # fmt: skip
    for rate in ("clean", "certified_linf_1", "certified_linf_2"):
        assert certified.comparison(saved, rate, "ibp") in row, rate
    # time.json: the run's segments (start and end stamps; an interrupted run resumed).
    segments = records.read_json(ROOT / "results" / "certified" / "cpu" / "time.json")["segments"]
    wall = sum((datetime.datetime.fromisoformat(g["end"]) -
                datetime.datetime.fromisoformat(g["start"])).total_seconds() for g in segments)
    assert f"{wall / 60:.0f} min of wall time" in row


def test_mini_preset_times_are_the_saved_measurements():
    saved = records.read_json(ROOT / "results" / "mini_times" / "times.json")
    rows = ["| preset | model | wall (s) | CPU (s) | load average, start → end | compile cache |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    rows += [f"| `{r['preset']}` | {r['model']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
             f"{r['load_start']:.1f} → {r['load_end']:.1f} | {r['cache']} |"
             for r in saved["runs"]]  # fmt: skip
    assert "\n".join(rows) in (ROOT / "experiments" / "README.md").read_text()
