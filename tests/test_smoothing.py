"""Randomized smoothing against a linear classifier's closed form (Cohen et al. 2019, App. B)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.analysis import smoothing as S

W = np.array([0.6, -0.8, 0.0, 0.0], np.float32).reshape(1, 2, 2)  # ‖w‖ = 1
B = 0.1


def linear(images):
    """Two classes: class 1 iff ⟨w, x⟩ + b > 0. Logits [B, 2]."""
    s = jnp.sum(images * W, axis=(1, 2, 3)) + B
    return jnp.stack([jnp.zeros_like(s), s], -1)


def _image(distance):
    """An image whose signed distance to the boundary is ``distance`` (‖w‖ = 1)."""
    return jnp.asarray((distance - B) * W / np.sum(W * W), jnp.float32)


def test_clopper_pearson_matches_the_binomial_tail():
    for k, n in ((3, 10), (57, 100), (999, 1000)):
        p = S.clopper_pearson_lower(k, n, 0.01)
        assert p <= k / n
        # P(Bin(n, p) ≥ k) = α defines the lower bound.
        assert stats.binom.sf(k - 1, n, p) == pytest.approx(0.01, rel=1e-6)
    assert S.clopper_pearson_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50), rel=1e-12)
    assert S.clopper_pearson_lower(0, 50, 0.01) == 0.0


def test_certify_matches_the_linear_closed_form():
    sigma, n, alpha = 0.5, 20_000, 0.001
    for distance in (0.3, 0.6):
        cert = S.certify(linear, _image(distance), jax.random.key(0), sigma=sigma, n0=100, n=n,
                         alpha=alpha, num_classes=2, batch=4096)  # fmt: skip
        assert cert.label == 1
        # g = f for a linear f, and the radius σΦ⁻¹(p_A) equals the distance |wᵀx + b|/‖w‖:
        # the certified radius is below it, by Monte Carlo error only.
        p_true = stats.norm.cdf(distance / sigma)
        assert cert.count / n == pytest.approx(p_true, abs=4 * np.sqrt(p_true / n))
        assert cert.radius <= distance
        assert cert.radius >= sigma * stats.norm.ppf(p_true - 5 * np.sqrt(p_true / n))
    # A point on the boundary's other side, nearly on it: abstains.
    near = S.certify(linear, _image(-0.01), jax.random.key(1), sigma=sigma, n0=100, n=2000,
                     alpha=alpha, num_classes=2, batch=1000)  # fmt: skip
    assert near.label == S.ABSTAIN and near.radius == 0.0


def test_certify_overshoots_at_most_alpha_of_the_time():
    sigma, distance, alpha = 0.5, 0.2, 0.05
    radii = [
        S.certify(
            linear,
            _image(distance),
            jax.random.key(i),
            sigma=sigma,
            n0=20,
            n=500,
            alpha=alpha,
            num_classes=2,
            batch=520,
        ).radius  # fmt: skip
        for i in range(60)
    ]
    # Each overshoot has probability ≤ α = 0.05: 9 or more of 60 has probability < 1 %.
    assert sum(r > distance for r in radii) < 9


def test_predict_and_bad_arguments():
    assert S.predict(linear, _image(0.5), jax.random.key(2), sigma=0.25, n=500, alpha=0.001,
                     num_classes=2) == 1  # fmt: skip
    assert S.predict(linear, _image(0.0), jax.random.key(3), sigma=0.25, n=200, alpha=0.001,
                     num_classes=2) == S.ABSTAIN  # fmt: skip
    for bad in (dict(sigma=0.0), dict(sigma=float("nan")), dict(alpha=1.0), dict(n=0)):
        kwargs = dict(sigma=0.25, n=10, alpha=0.01, num_classes=2) | bad
        with pytest.raises(ValueError):
            S.certify(linear, _image(0.5), jax.random.key(0), **kwargs)
