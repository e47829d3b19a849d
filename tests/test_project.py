"""The README's two set-up commands stay true: CI runs exactly the README's test command."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in text.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands():
    main_cmd, test_cmd = _readme_commands()
    assert main_cmd.endswith("diffjax run main") and "pytest" in test_cmd
    # The main job needs no PyTorch: its install line has no extra.
    assert 'pip install -q -e .' in main_cmd and "[" not in main_cmd
    assert (ROOT / "README.md").read_text().startswith("# diffjax\n\n```bash\n")


def test_ci_runs_the_readme_test_command():
    _, test_cmd = _readme_commands()
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_installing_claims_no_generic_top_level_name(tmp_path):
    """`experiments/` installs as `diffjax.experiments`; a plain `import experiments` from
    anywhere but the checkout finds nothing."""
    import subprocess
    import sys

    code = ("import importlib.util as u; import diffjax.experiments.configs as c; "
            "print(u.find_spec('experiments') is None, c.__name__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out == ["True", "diffjax.experiments.configs"]


def test_no_project_file_points_outside_the_repository():
    bad = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if not path.is_file() or parts[0] in (".git", ".venv", "runs") or "egg-info" in str(path):
            continue
        if path.suffix in (".py", ".md", ".toml", ".yml", ".json", ".txt", ""):
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            if "../" + "shared" in text:  # the folder beside the checkout, not in a clone
                bad.append(str(path.relative_to(ROOT)))
    assert bad == []


def test_ci_builds_the_documentation_strictly():
    # A warning (a dead link or anchor) fails the build: mkdocs_hooks.py keeps the links of the
    # pages symlinked in from outside docs/ pointing at their site pages.
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any("mkdocs build --strict" in line and '".[docs]"' in line for line in lines)
