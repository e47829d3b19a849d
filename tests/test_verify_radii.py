"""diffjax.verify.radii: certified radii by bisection for the interval certificate, each
re-checked independently (the interval certifier's own grid certificate certifies it, and PGD
with margin loss and restarts at that radius does not flip the prediction), the curve, and the
refusal of bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import attacks, verify
from diffjax.analysis import certified as C
from diffjax.verify import radii as R
from tests.analysis_models import tiny

# The interval certificate's radii on these models (decades below the verifier's).
HI = {"linf": 2e-5, "l2": 2e-3}
STEPS = 5


@functools.cache
def _batch(attention):
    """Three images labelled by the model's predictions, and a fourth with a wrong label."""
    with jax.enable_x64():
        model = tiny(attention, depth=1)
        x = jax.random.uniform(jax.random.key(3), (3, 8, 8, 3), jnp.float64)
        labels = jnp.argmax(model(x), -1)
        x = jnp.concatenate([x, x[:1]])
        labels = jnp.concatenate([labels, (labels[:1] + 1) % model.config.num_classes])
        return model, x, labels


def _pgd_flips(model, x, labels, radii, norm):
    cfg = attacks.PGDConfig(eps=1.0, norm=norm, steps=40, restarts=3, loss="margin")
    fn = attacks.model_function(model)
    res = attacks.pgd(fn, x.astype(jnp.float32), labels, jax.random.key(0), cfg,
                      eps=jnp.asarray(radii, jnp.float32))  # fmt: skip
    return np.asarray(res.success)


@pytest.mark.parametrize("attention,norm", [("diff", "linf"), ("softmax", "l2")])
def test_interval_radii_are_certified_and_survive_an_attack(attention, norm):
    """The verifier's methods go through the same bisection (verify.bisect); their radii are
    re-checked by test_verify_vit and by the analyse command's test."""
    model, x, labels = _batch(attention)
    hi = HI[norm]
    with jax.enable_x64():
        radii = R.certified_radii(model, x, labels, norm=norm, method="interval", hi=hi,
                                  steps=STEPS)  # fmt: skip
        assert radii.shape == (4,) and radii[3] == 0.0  # the wrong label: nothing certified
        assert np.all(radii[:3] > 0), radii  # the model's own predictions: positive margins
        grid = hi * 2.0**-STEPS
        assert np.all(radii <= hi) and np.allclose(radii / grid, np.round(radii / grid))
        # The interval certifier's own grid certificate certifies each radius.
        grid_radius = jax.jit(
            lambda x, y, r: C.certified_radius(model, x, y, norm, radii=np.array([r])).radius,
            static_argnums=2,
        )
        for i in range(3):
            assert float(grid_radius(x[i], labels[i], float(radii[i]))) == radii[i]
    assert not _pgd_flips(model, x[:3], labels[:3], radii[:3], norm).any()


def test_certified_accuracy_counts_radii():
    radius = [0.0, 0.01, 0.02, 0.05]
    assert R.certified_accuracy(radius, [0.0, 0.01, 0.03, 0.06]) == [0.75, 0.75, 0.25, 0.0]


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(method="deepz"), "method must be one of ('interval', 'ibp'"),
     (dict(norm="l1"), "norm must be one of"), (dict(hi=0.0), "hi"),
     (dict(steps=0), "steps must be a positive integer"),
     (dict(intermediate="full"), "ignored by method='interval'")],
)  # fmt: skip
def test_bad_input_is_refused(kwargs, message):
    model, x, labels = _batch("softmax")
    options = dict(norm="linf", method="interval", hi=0.05, steps=4) | kwargs
    with jax.enable_x64(), pytest.raises(ValueError, match=message.replace("(", r"\(")):
        R.certified_radii(model, x, labels, **options)


def test_check_method_names_the_field_and_the_methods_it_allows():
    R.check_method("interval", "verify_method")
    R.check_method("crown", "verify_method", verify.METHODS)
    # margin_lower_bounds has no interval certificate: refused where only the verifier runs
    with pytest.raises(ValueError, match=r"^verify_method must be one of \('ibp', .*'interval'"):
        R.check_method("interval", "verify_method", verify.METHODS)
