"""The verifier engine's two ways of doing the same work give the same numbers: linear bounds
kept in the affine prefix's coordinates (``engine.affine_base``) equal those kept in the input's,
and examples bounded in chunks (``batch_size``) equal examples bounded all at once."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import verify
from diffjax.verify import engine
from tests.analysis_models import tiny

RTOL = 1e-12


def _setup(attention):
    model = tiny(attention, depth=1)
    x = jax.random.uniform(jax.random.key(3), (3, 8, 8, 3), jnp.float64)
    labels = jnp.argmax(model(x), -1)
    return model, x, labels


@pytest.mark.parametrize("attention", ["softmax", "diff"])
def test_bounds_in_prefix_coordinates_equal_bounds_in_input_coordinates(attention, monkeypatch):
    with jax.enable_x64():
        model, x, labels = _setup(attention)
        prog = verify.program(model)
        base = engine.affine_base(prog)
        # The tiny model's embedding: 4 patches + CLS of width 16, fewer numbers than 8×8×3.
        assert base != 0 and prog.shapes[base] == (1, 5, 16)
        s = engine.input_set(x[0], jnp.asarray(0.02), "linf")
        spec = engine.margin_spec(labels[0], 10, jnp.float64)

        def bounds():  # traced anew: affine_base is read at trace time
            return jax.jit(lambda: engine.intermediate_bounds(prog, s, "crown", 0.0))()

        with_base = bounds()
        monkeypatch.setattr(engine, "affine_base", lambda prog: 0)
        without = bounds()
        for v in without:
            # Another summation order: the last bits move, magnified where a bound is a small
            # difference of large terms (DA's A1 − λ·A2: bounds ~1e-6 from terms ~1e2; the rsqrt
            # of a norm whose variance reaches 0, slope ~1e7), hence not 1e-12. A lost or
            # doubled term would move a bound by the size of the terms.
            for a, b in zip(with_base[v], without[v], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-8, err_msg=f"variable {v}")
        # The final backward pass, term by term: (A, |A|, b, |b|).
        direct, staged = jax.jit(lambda: (
            engine.backward(prog, prog.output, spec, without),
            engine.to_input(prog, engine.backward(prog, prog.output, spec, without, base=base),
                            base, without),
        ))()  # fmt: skip
        for a, b in zip(staged, direct, strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_chunked_examples_equal_one_batch(method):
    with jax.enable_x64():
        model, x, labels = _setup("diff")
        eps = jnp.asarray([0.0, 0.01, 0.03])
        bound = functools.partial(verify.margin_lower_bounds, model, x, labels, eps, method=method)
        runs = [np.asarray(bound(batch_size=b)) for b in (1, 2, 3)]
        for r in runs[1:]:
            np.testing.assert_allclose(r, runs[0], rtol=RTOL, atol=1e-13)
        radii = [verify.certified_radius(model, x, labels, method=method, hi=0.05, steps=3,
                                         batch_size=b) for b in (1, 2)]  # fmt: skip
        np.testing.assert_array_equal(radii[0], radii[1])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_batch_size_is_refused(bad):
    with jax.enable_x64():
        model, x, labels = _setup("softmax")
        with pytest.raises(ValueError, match="batch_size"):
            verify.margin_lower_bounds(model, x, labels, 0.01, batch_size=bad)


@pytest.mark.parametrize(
    "method, intermediate",
    [("crown", "fast"), ("crown", None), ("ibp", "full"), ("crown-ibp", "full")],
)
def test_bad_intermediate_is_refused(method, intermediate):
    with jax.enable_x64():
        model, x, labels = _setup("softmax")
        with pytest.raises(ValueError, match="intermediate"):
            verify.margin_lower_bounds(model, x, labels, 0.01, method=method,
                                       intermediate=intermediate)  # fmt: skip
