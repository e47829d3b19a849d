"""Test set-up: several simulated CPU devices, so sharded code paths run in every test session.

The count comes from ``DIFFJAX_TEST_DEVICES`` (default 4) and must be set before JAX starts.
"""

import os

import jax

jax.config.update("jax_num_cpu_devices", int(os.environ.get("DIFFJAX_TEST_DEVICES", "4")))
jax.config.update("jax_default_matmul_precision", "highest")
