"""Test set-up: several simulated CPU devices, so sharded code paths run in every test session.

The count comes from ``DIFFJAX_TEST_DEVICES`` (default 4) and must be set before JAX starts.
"""

import gc
import os

import jax
import pytest

jax.config.update("jax_num_cpu_devices", int(os.environ.get("DIFFJAX_TEST_DEVICES", "4")))
jax.config.update("jax_default_matmul_precision", "highest")


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
