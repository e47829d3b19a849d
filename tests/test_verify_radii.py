"""diffjax.verify.radii: certified radii by bisection for the interval certificate and the
verifier's methods. Each radius is re-checked independently: the verifier's margin lower bounds
at that radius are positive, the interval certifier's own grid certificate certifies it, and
PGD (margin loss, restarts) at that radius does not flip the prediction."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import attacks, verify
from diffjax.analysis import certified as C
from diffjax.verify import radii as R
from tests.analysis_models import tiny

# The interval certificate's radii are decades below the verifier's (docs/certified.md).
HI = {("interval", "linf"): 2e-5, ("interval", "l2"): 2e-3, "linf": 0.05, "l2": 0.5}
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


@pytest.mark.parametrize(
    "attention,norm,method",
    # CROWN's own bisection is checked in test_verify_vit; one verifier method suffices here.
    [("diff", "linf", "interval"), ("softmax", "l2", "interval"), ("softmax", "l2", "crown-ibp")],
)  # fmt: skip
def test_radii_are_certified_and_survive_an_attack(attention, norm, method):
    model, x, labels = _batch(attention)
    with jax.enable_x64():
        hi = HI.get((method, norm), HI[norm])
        radii = R.certified_radii(model, x, labels, norm=norm, method=method, hi=hi, steps=STEPS)
        assert radii.shape == (4,) and radii[3] == 0.0  # the wrong label: nothing certified
        ok = radii[:3] > 0
        assert ok.all(), radii  # the model's own predictions have positive margins
        grid = hi * 2.0**-STEPS
        assert np.all(radii <= hi) and np.allclose(radii / grid, np.round(radii / grid))
        lb = np.asarray(verify.margin_lower_bounds(model, x[:3], labels[:3], jnp.asarray(radii[:3]),
                                                   norm, "crown"))  # fmt: skip
        others = np.arange(lb.shape[1]) != np.asarray(labels[:3])[:, None]
        if method == "interval":
            # The interval certifier's own grid certificate at the radius; CROWN is tighter
            # than intervals on these models, so it certifies it too.
            c = C.certified_radius(model, x[0], labels[0], norm, radii=radii[:1])
            assert float(c.radius) == radii[0]
        assert np.all(lb[others] > 0)
    assert not _pgd_flips(model, x[:3], labels[:3], radii[:3], norm).any()


def test_certified_accuracy_counts_radii():
    radius = [0.0, 0.01, 0.02, 0.05]
    assert R.certified_accuracy(radius, [0.0, 0.01, 0.03, 0.06]) == [0.75, 0.75, 0.25, 0.0]


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(method="deepz"), "method must be one of ('interval', 'ibp'"),
     (dict(norm="l1"), "norm must be one of"), (dict(hi=0.0), "hi"),
     (dict(steps=0), "steps must be a positive integer")],
)  # fmt: skip
def test_bad_input_is_refused(kwargs, message):
    model, x, labels = _batch("softmax")
    options = dict(norm="linf", method="interval", hi=0.05, steps=4) | kwargs
    with jax.enable_x64(), pytest.raises(ValueError, match=message.replace("(", r"\(")):
        R.certified_radii(model, x, labels, **options)
