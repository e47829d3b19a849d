"""Test set-up: several simulated CPU devices, so sharded code paths run in every test session,
and XLA:CPU's compiler at -O0.

The device count comes from ``DIFFJAX_TEST_DEVICES`` (default 4); both settings must be made
before JAX starts its backend. A test marked ``@pytest.mark.default_compiler`` runs in a child
pytest at XLA's default optimisation level instead.
"""

import gc
import os
import subprocess
import sys

import jax
import pytest

# The suite's time is mostly XLA:CPU compiling thousands of small programs, and LLVM's
# optimisation passes are most of that: at -O0 a compile-bound test file takes about half as
# long. Fast-math is off at every level, but the last bit may differ between levels (at -O3
# LLVM may contract a·b + c into one fused multiply-add), so every comparison a test makes
# (against NumPy, PyTorch, a second run) is within one setting and to a tolerance, except the
# bit-identity claims about two different programs: those are `default_compiler` tests.
# Subprocesses the tests start (CLI runs, simulated hosts) inherit it through the environment.
OPT_FLAG = "--xla_backend_optimization_level"
CHILD = "DIFFJAX_TEST_DEFAULT_COMPILER"
if OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_FLAG}=0".strip()

jax.config.update("jax_num_cpu_devices", int(os.environ.get("DIFFJAX_TEST_DEVICES", "4")))
jax.config.update("jax_default_matmul_precision", "highest")

# The files that take a minute or more on 2 cores (--durations), slowest first. They start
# before all others: with --dist loadfile a file runs on one worker, and xdist hands out files in
# collection order, so one of them collected last would run alone while the other worker idles.
SLOW_FILES = ("test_verify_vit.py", "test_experiments_paper.py", "test_train_certified.py",
              "test_doc_examples.py",
              "test_experiment_certified.py", "test_multihost.py", "test_analyse_cli.py",
              "test_experiment_main.py", "test_experiment_clip.py", "test_verify_lipschitz.py",
              "test_experiment_faults.py", "test_train.py", "test_verify_radii.py",
              "test_stopping.py", "test_experiment_language.py", "test_certified_scope.py",
              "test_verify_lirpa.py", "test_verify_engine.py")  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: files intact


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "default_compiler: run at XLA's default optimisation level (in a child pytest), for "
        "bit-identity claims that depend on the code LLVM generates",
    )


def pytest_pyfunc_call(pyfuncitem):
    """Run a ``default_compiler`` test in a child pytest whose XLA flags leave the level alone."""
    if pyfuncitem.get_closest_marker("default_compiler") is None or os.environ.get(CHILD):
        return None
    flags = " ".join(f for f in os.environ["XLA_FLAGS"].split() if not f.startswith(OPT_FLAG))
    # The child must not add -O0 itself: an explicit level in XLA_FLAGS tells it so (3 is XLA's
    # default).
    env = {**os.environ, CHILD: "1", "XLA_FLAGS": f"{flags} {OPT_FLAG}=3".strip()}
    # One process, no worker pool: the ini file's addopts (-n auto) are dropped.
    argv = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
            pyfuncitem.nodeid]  # fmt: skip
    done = subprocess.run(argv, env=env, cwd=pyfuncitem.config.rootpath, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        tail = done.stdout[-6000:] + done.stderr[-2000:]
        pytest.fail(f"at XLA's default optimisation level:\n{tail}", pytrace=False)
    if " passed" not in done.stdout.splitlines()[-1]:  # e.g. skipped there: not a pass here
        pytest.skip(f"in the child pytest: {done.stdout.splitlines()[-1]}")
    return True


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    """Drop every compiled executable after each test module.

    Each XLA:CPU executable holds a few memory maps; the whole suite in one process compiles
    enough of them to reach the kernel's vm.max_map_count (65,530), where the next compilation's
    mmap fails and LLVM crashes with a segfault.
    """
    yield
    jax.clear_caches()
    gc.collect()
