"""The profile's bookkeeping: op classification from HLO, and the GEMM inventory of a step."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import diffjax as dj
from benchmarks import profile


def _dot_flops(jaxpr) -> float:
    """2·(batch·m·k·n) summed over every dot_general of a (nested) jaxpr: autodiff's own GEMMs."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            k = 1
            for axis in lc:
                k *= lhs[axis]
            size = 1
            for n in out:
                size *= n
            total += 2.0 * size * k
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _dot_flops(sub)
    return total


@pytest.mark.parametrize("attention", ["softmax", "diff"])
@pytest.mark.parametrize("step", ["train", "pgd"])
def test_step_gemms_count_every_product_autodiff_emits(attention, step):
    config = dj.preset("tiny", attention=attention, depth=2, mlp_ratio=3.0)
    model = dj.ViT(config, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
    y = jnp.arange(3) % config.num_classes
    fn, args = profile.step_fn(model, x, y, step)
    expected = _dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)
    ours = sum(g.count * g.flops for g in profile.step_gemms(config, 3, step))
    # Left out on purpose: the classifier head ([B, D]·[D, C] and its gradients) and DA's λ,
    # two [d]·[d] dots per layer (and their two gradients when training).
    head = 2.0 * 3 * config.width * config.num_classes * (3 if step == "train" else 2)
    d = config.width // config.num_heads
    lam = 2 * 2.0 * d * config.depth * (3 if step == "train" else 1) if attention == "diff" else 0
    assert ours == pytest.approx(expected - head - lam, rel=1e-12)


def test_op_kinds_classifies_a_compiled_module():
    def f(a, b):
        return (a @ b).sum(axis=0), jnp.exp(a) + 1.0, a.T.copy()

    a = jnp.ones((64, 32))
    hlo = jax.jit(f).lower(a, jnp.ones((32, 16))).compile().as_text()
    kinds = profile.op_kinds(hlo)
    assert set(kinds.values()) <= set(profile.KINDS)
    dots = [name for name, kind in kinds.items() if kind == "GEMM"]
    assert dots, kinds
    assert "elementwise" in kinds.values() and "layout" in kinds.values(), kinds
