"""The PyTorch benchmark reference computes the same function as diffjax on shared weights."""

import jax
import numpy as np
import pytest
from flax import nnx

import diffjax as dj

torch = pytest.importorskip("torch")
from benchmarks.torch_reference import from_diffjax  # noqa: E402


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_torch_reference_matches_diffjax(attention):
    config = dj.preset("tiny", attention=attention, lambda_init="schedule", depth=3)
    model = dj.ViT(config, rngs=nnx.Rngs(0))
    x = np.array(jax.random.uniform(jax.random.key(1), (4, 8, 8, 3)))
    with torch.no_grad():
        ref = from_diffjax(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), ref, rtol=1e-5, atol=1e-5)
