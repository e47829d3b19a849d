"""The README's two set-up commands stay true: CI runs exactly the README's test command."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in text.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands():
    main_cmd, test_cmd = _readme_commands()
    assert "experiments.main" in main_cmd and "pytest" in test_cmd
    assert (ROOT / "README.md").read_text().startswith("# diffjax\n\n```bash\n")


def test_ci_runs_the_readme_test_command():
    _, test_cmd = _readme_commands()
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()
