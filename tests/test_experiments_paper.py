"""The six paper experiments at their mini configs, run as `diffjax run NAME`: outputs,
independent re-checks of the reported numbers from the per-example records, shared zoo models,
resume, overrides in the resolved config, figures, bad input."""

import csv
import json
import os
import stat

import numpy as np
import pytest

from diffjax import attacks
from diffjax.experiments import (
    alignment,
    asr_table,
    configs,
    depth,
    lambda_sweep,
    lambda_training,
    lipschitz,
    zoo,
)
from diffjax.train import TrainConfig
from tests.commandline import diffjax, diffjax_error

SCRIPTS = {
    "asr_table": asr_table,
    "lambda_sweep": lambda_sweep,
    "alignment": alignment,
    "lipschitz": lipschitz,
    "depth": depth,
    "lambda_training": lambda_training,
}


def command(name, root, *extra):
    return ["run", name, f"--config={name}:mini", "--workdir", str(root), "--offline", *extra]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    out = {name: diffjax(*command(name, root)) for name in SCRIPTS}
    return root, out


def _saved(root, name):
    result = json.loads((root / "results" / name / "mini" / "results.json").read_text())
    with open(root / "results" / name / "mini" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    return result, rows


def test_every_script_writes_results_config_environment_and_csv(mini):
    root, out = mini
    for name in SCRIPTS:
        result, rows = _saved(root, name)
        assert result["experiment"] == name and result["preset"] == "mini"
        assert result["config"] == configs.to_dict(configs.load(f"{name}:mini"))
        assert result["environment"]["packages"]["jax"]
        assert rows, name
        # What main() returned is what it wrote (JSON round trip).
        assert json.loads(json.dumps(out[name])) == result


def test_asr_table_numbers_recomputed_from_the_example_records(mini):
    root, _ = mini
    result, _ = _saved(root, "asr_table")
    preset = configs.load("asr_table:mini")
    for t in result["tables"]["synthetic"].values():
        seed_parts = t["per_seed"]
        for i, eps in enumerate(preset.eps):
            per_seed = []
            for p in seed_parts:
                a = p["pgd"][i]
                correct = np.asarray(a["clean_correct"], bool)
                fooled = correct & ~np.asarray(a["adv_correct"], bool)
                asr = fooled.sum() / correct.sum() if correct.any() else None
                assert a["summary"]["asr"] == asr
                # The re-measured perturbations respect the budget.
                assert max(a["linf"]) <= eps + 1e-6
                per_seed.append(asr)
            row = next(r for r in t["rows"] if r["attack"].startswith("PGD")
                       and r["budget"] == pytest.approx(eps * 255))  # fmt: skip
            assert row["per_seed"] == [a for a in per_seed if a is not None]
        for p in seed_parts:
            cw = p["cw"]
            correct = np.asarray(cw["clean_correct"], bool)
            fooled = correct & ~np.asarray(cw["adv_correct"], bool)
            for b in cw["budgets"]:
                k = int(np.sum(fooled & (np.asarray(cw["l2"]) <= b["l2"])))
                assert b["asr"] == (k / correct.sum() if correct.any() else None)
        clean = next(r for r in t["rows"] if r["attack"] == "clean accuracy")
        assert clean["per_seed"] == [p["clean"]["test_accuracy"] for p in seed_parts]


def test_cw_budget_asr_on_a_constructed_record():
    part = {"clean_correct": [1, 1, 1, 0], "adv_correct": [0, 0, 1, 0], "l2": [0.1, 0.3, 0.0, 0.0]}
    out = asr_table.cw_budget_asr(part, (0.05, 0.2, 1.0))
    assert [o["asr"] for o in out] == [0.0, 1 / 3, 2 / 3]
    assert out[1]["asr_ci"] == attacks.wilson_interval(1, 3)


def test_depth_l2_for_full_asr_is_defined_only_when_every_correct_example_falls():
    fooled_all = {"clean_correct": [1, 1, 0], "adv_correct": [0, 0, 0], "l2": [0.2, 0.5, 9.0]}
    assert depth.l2_for_full_asr(fooled_all) == 0.5
    one_left = {"clean_correct": [1, 1], "adv_correct": [0, 1], "l2": [0.2, 0.0]}
    assert depth.l2_for_full_asr(one_left) is None


def test_zoo_models_are_shared_between_scripts(mini):
    root, _ = mini
    runs = sorted(p.name for p in (root / "runs" / "zoo" / "synthetic").iterdir())
    # asr_table trains the D=2 pair; alignment, lipschitz and lambda_training reuse it; depth
    # reuses the λ sweep's D=1 models (λ_init 0.8 is the recipe's own, so no variant). Each run
    # is named by the hash of its resolved training config.
    assert [r.rsplit("-", 1)[0] for r in runs] == [
        "diffvit_d1_li0.5_s0", "diffvit_d1_s0", "diffvit_d2_s0", "vit_d1_s0", "vit_d2_s0"]
    for run in runs:
        saved = TrainConfig.from_dict(json.loads((root / "runs" / "zoo" / "synthetic" / run /
                                                  "config.json").read_text()))  # fmt: skip
        assert run.endswith("-" + zoo.config_hash(saved))


def test_alignment_and_lipschitz_summaries_match_their_parts(mini):
    root, _ = mini
    result, _ = _saved(root, "alignment")
    for name, m in result["models"].items():
        for layer in m["layers"]:
            per = [p[layer["layer"]] for p in m["per_seed"]]
            cos = np.concatenate([np.ravel(r["cos"]) for r in per])
            assert layer["per_seed"] == [float(np.mean(np.ravel(r["cos"]) < 0)) for r in per]
            assert sum(layer["histogram"]) == np.sum(~np.isnan(cos))
            assert (layer["lambda_mean"] is None) == (name == "vit")
    result, _ = _saved(root, "lipschitz")
    for m in result["models"].values():
        for layer in m["layers"]:
            exact = [np.mean(p[layer["layer"]]["exact"]) for p in m["per_seed"]]
            assert layer["exact_mean"] == pytest.approx(np.mean(exact))
    ratio = result["diffvit_over_vit_exact"]
    vit, diff = result["models"]["vit"]["layers"], result["models"]["diffvit"]["layers"]
    assert ratio == pytest.approx([d["exact_mean"] / v["exact_mean"]
                                   for v, d in zip(vit, diff, strict=True)])  # fmt: skip


def test_lambda_training_reads_every_checkpoint_and_the_logged_lambdas(mini):
    root, _ = mini
    result, rows = _saved(root, "lambda_training")
    run = result["models"]["diffvit"][0]
    assert [p["step"] for p in run["checkpoints"]] == [4, 8]  # 2 epochs of 4 steps
    (run_dir,) = (root / "runs" / "zoo" / "synthetic").glob("diffvit_d2_s0-*")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["kind"] == "train"]
    assert run["lambda_curve"]["step"] == [r["step"] for r in train]
    # λ read back from each checkpoint equals the λ logged at that step.
    for point in run["checkpoints"]:
        at = next(r for r in train if r["step"] == point["step"])
        assert point["lambda"] == pytest.approx(at["lambda"], rel=1e-6)
    assert all(p["lambda"] == [None, None] for p in result["models"]["vit"][0]["checkpoints"])
    assert len(rows) == 4


def test_lambda_sweep_sets_lambda_init_and_reports_the_paper_row(mini):
    root, _ = mini
    result, _ = _saved(root, "lambda_sweep")
    rows = {r["lambda_init"]: r for r in result["rows"]}
    assert rows[0.8]["paper_asr"] == 0.8498 and rows[None]["paper_asr"] is None
    for lam in (0.5, 0.8):
        final = result["runs"][f"diffvit_li{lam:g}"][0]["final_lambda"]
        # Trained λ moves away from, but starts at, λ_init + exp(λq1·λk1) − exp(λq2·λk2).
        assert len(final) == 1 and abs(final[0] - lam) < 0.3


def test_a_rerun_resumes_from_the_parts_and_computes_nothing(mini, monkeypatch):
    root, out = mini
    parts = sorted((root / "results").glob("*/mini/parts/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}

    def fail(*a, **k):
        raise AssertionError("a finished part was recomputed")

    for script in (asr_table, depth):
        monkeypatch.setattr(script, "pgd_asr", fail)
        monkeypatch.setattr(script, "run_attack", fail)
    again = diffjax(*command("asr_table", root))
    assert again["tables"] == out["asr_table"]["tables"]
    assert diffjax(*command("depth", root))["rows"] == out["depth"]["rows"]
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps


def test_figures_are_drawn_from_saved_results_alone(mini, tmp_path):
    root, _ = mini
    # `diffjax run` drew them already; `diffjax figures` redraws them from the results alone.
    assert sorted(p.name for p in (root / "figures").iterdir()) == sorted(
        f"{name}_mini.{ext}" for name in SCRIPTS for ext in ("png", "pdf"))
    drawn = {p: p.read_bytes() for p in (root / "figures").iterdir()}
    (root / "runs").rename(tmp_path / "runs_away")  # no model can be read
    try:
        written = diffjax("figures", "--workdir", str(root), "--preset", "mini")
    finally:
        (tmp_path / "runs_away").rename(root / "runs")
    assert sorted(written) == sorted(str(p) for p in (root / "figures").iterdir())
    for p in written:
        with open(p, "rb") as f:
            assert f.read(8) == (b"\x89PNG\r\n\x1a\n" if p.endswith(".png") else b"%PDF-1.4")
    # Redrawing unchanged results rewrites the same bytes (no creation date in the PDFs).
    assert {p: p.read_bytes() for p in drawn} == drawn
    # Results are written with the usual permissions (0666 less the umask), not owner-only.
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "summary.csv"):
        for path in (root / "results").rglob(name):
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_missing_dataset_fails_clearly(name, tmp_path, capsys):
    extra = ["--config.datasets=('cifar100',)"] if name == "asr_table" else []
    argv = ["run", name, f"--config={name}:cpu", "--data-dir", str(tmp_path), "--workdir",
            str(tmp_path / "w"), "--offline", *extra]  # fmt: skip
    err = diffjax_error(capsys, *argv)
    assert "not available here" in err and str(tmp_path) in err
    assert not (tmp_path / "w" / "runs").exists()


def test_a_command_line_override_changes_the_resolved_config_in_the_results(tmp_path):
    out = diffjax(*command("lambda_sweep", tmp_path, "--config.lambdas=(0.7,)",
                           "--config.train.epochs=1", "--config.pgd_steps=1"))  # fmt: skip
    saved, _ = _saved(tmp_path, "lambda_sweep")
    assert saved["config"]["lambdas"] == [0.7] and saved["config"]["train"]["epochs"] == 1
    assert saved["config"]["pgd_steps"] == 1 and out["config"] == saved["config"]
    assert [r["lambda_init"] for r in saved["rows"]] == [None, 0.7]
    (run,) = (tmp_path / "runs" / "zoo" / "synthetic").glob("diffvit_d1_li0.7_s0-*")
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_no_experiment_runs_on_synthetic_data_by_default():
    for name in [*SCRIPTS, "clip_compare"]:
        config = configs.load(name)
        datasets = config.get("datasets") or (config.get("dataset") or config.train.dataset,)
        assert "synthetic" not in datasets, name


def test_lambda_correlation_ranks_lambda_against_the_constants():
    def layer(lam, exact):
        return {"lambda": lam, "exact": [exact, exact]}

    models = {
        "diffvit": {"per_seed": [[layer(0.2, 1.0), layer(0.5, 2.0)], [layer(0.9, 3.0),
                                                                      layer(0.1, 0.5)]]},
        "vit": {"per_seed": [[layer(None, 1.0), layer(None, 1.0)], [layer(None, 4.0),
                                                                    layer(None, 0.1)]]},
    }  # fmt: skip
    c = lipschitz.lambda_correlation(models)
    assert c["pairs"] == 4
    assert c["exact"]["spearman"] == pytest.approx(1.0)  # λ order 0.1 < 0.2 < 0.5 < 0.9
    # Ratios 1.0, 2.0, 0.75, 5.0 (ranks 2, 3, 1, 4) against λ 0.2, 0.5, 0.9, 0.1 (ranks 2, 3, 4,
    # 1): Σd² = 18, ρ = 1 − 6·18/(4·15) = −0.8.
    assert c["ratio"]["spearman"] == pytest.approx(-0.8)
