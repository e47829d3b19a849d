"""Alignment statistics and the paper's Lemma 1 / Theorems 1-3 on real and constructed models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analysis as an
from tests.analysis_models import tied_branches, tiny


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(5), (3, 8, 8, 3), jnp.float64)


@pytest.fixture(scope="module")
def models():
    return {"diff": tiny("diff"), "softmax": tiny("softmax")}


@pytest.fixture(scope="module")
def grams(models, images):
    return {k: an.branch_grams(m, images, 0, wrt="image") for k, m in models.items()}


@pytest.fixture(scope="module")
def jacobians(models, images):
    """Explicit Jacobians (flattened [B, H, R, K·n]) of layer 0 of a DiffViT and its ViT."""
    out = {}
    for attention, model in models.items():
        jac = an.branch_jacobians(model, images, 0, wrt="image")
        flat = lambda a: None if a is None else np.asarray(a).reshape(*a.shape[:3], -1)  # noqa: E731
        out[attention] = (flat(jac.first), flat(jac.second), flat(jac.combined), jac.lam)
    return out


def test_lemma1_identity_in_float64(jacobians):
    j1, j2, jda, lam = jacobians["diff"]
    lam = float(lam[0])
    for axes in ((-1,), (-2, -1), (-3, -2, -1)):  # per head and row, per head, per layer
        n1 = np.sqrt(np.sum(j1**2, axis=axes))
        n2 = np.sqrt(np.sum(j2**2, axis=axes))
        cos = np.sum(j1 * j2, axis=axes) / (n1 * n2)
        measured = np.sqrt(np.sum(jda**2, axis=axes))
        predicted = an.lemma1_norm(n1, n2, cos, lam)
        np.testing.assert_allclose(predicted, measured, rtol=1e-10)
        assert np.all(cos > -1) and np.any(cos < 0) and np.any(cos > 0)  # a non-trivial mix


def test_grams_give_the_flattened_alignment(grams, jacobians):
    j1, j2, _, _ = jacobians["diff"]
    gram = grams["diff"]
    heads = an.alignment(an.reduce_gram(gram, "rows"))  # one flattened Jacobian per head
    a, b = j1.reshape(*j1.shape[:2], -1), j2.reshape(*j2.shape[:2], -1)
    cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    np.testing.assert_allclose(heads.cos, cos, rtol=1e-10)
    np.testing.assert_allclose(heads.rho, np.linalg.norm(b, axis=-1) / np.linalg.norm(a, axis=-1))
    cos_all = an.alignment(gram).cos
    assert an.negative_frequency(cos_all) == pytest.approx(np.mean(np.asarray(cos_all) < 0))
    check = an.check_theory(gram)
    assert np.max(check.lemma1_rel_err) < 1e-10
    assert np.all(check.theorem1_holds)
    assert np.all((check.theorem1_position >= 0) & (check.theorem1_position <= 1))


def test_theorems_2_and_3_against_a_standard_attention_model(grams, jacobians):
    gram, base = grams["diff"], grams["softmax"]
    check = an.check_theory(gram, base)
    # NumPy reference from the explicit Jacobians, per example and row, heads aggregated.
    j1, j2, jda, lam = jacobians["diff"]
    b1, b2, _, _ = jacobians["softmax"]
    heads = j1.shape[1]
    rms = lambda *js: np.sqrt(sum(np.sum(j**2, (1, 3)) for j in js) / (heads * len(js)))  # noqa: E731
    gamma = rms(j1) / rms(b1, b2)
    np.testing.assert_allclose(an.gamma(gram, base), gamma, rtol=1e-10)
    np.testing.assert_allclose(check.ratio, rms(jda) / rms(b1, b2), rtol=1e-10)
    assert np.max(check.theorem2_rel_err) < 1e-10
    np.testing.assert_array_equal(check.theorem3_predicted, check.theorem3_measured)


def test_theorem3_condition_is_theorem2_ratio_above_one():
    rng = np.random.default_rng(0)
    gamma, rho, lam = rng.uniform(0.2, 3, (3, 10_000))
    cos = rng.uniform(-1, 1, 10_000)
    above = an.theorem2_ratio(gamma, rho, cos, lam) > 1
    below = cos < an.theorem3_threshold(gamma, rho, lam)
    assert np.mean(above == below) == 1.0 and 0.1 < np.mean(above) < 0.9


def test_lemma1_and_theorem1_formulas_on_vectors():
    rng = np.random.default_rng(1)
    j1, j2 = rng.normal(size=(2, 50))
    lam = 0.7
    n1, n2 = np.linalg.norm(j1), np.linalg.norm(j2)
    cos = j1 @ j2 / (n1 * n2)
    assert an.lemma1_norm(n1, n2, cos, lam) == pytest.approx(np.linalg.norm(j1 - lam * j2))
    low, high = an.theorem1_extremes(n1, n2 / n1, lam)
    assert low == pytest.approx(np.linalg.norm(j1 - lam * n2 / n1 * j1))
    assert high == pytest.approx(np.linalg.norm(j1 + lam * n2 / n1 * j1))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_constructed_alignment_plus_and_minus_one(sign):
    model = tied_branches(sign)
    images = jax.random.uniform(jax.random.key(6), (2, 4, 4, 3), jnp.float64)
    gram = an.branch_grams(model, images, 0, wrt="image")
    a = an.alignment(gram)
    lam = float(a.lam.ravel()[0])
    assert np.all(a.norm1 > 1e-3)
    np.testing.assert_allclose(a.cos, sign, atol=1e-12)
    np.testing.assert_allclose(a.rho, 1.0, atol=1e-12)
    # Theorem 1's extremes are attained: |1 − λ| at cos θ = +1, 1 + λ at cos θ = −1.
    np.testing.assert_allclose(a.norm_da / a.norm1, abs(1 - sign * lam), rtol=1e-12)
    position = an.check_theory(gram).theorem1_position
    np.testing.assert_allclose(position, 0.0 if sign > 0 else 1.0, atol=1e-10)
    assert an.negative_frequency(a.cos) == (0.0 if sign > 0 else 1.0)


def test_gamma_needs_matching_grams(grams):
    gram = jax.tree.map(lambda g: g[:, :1], grams["diff"])  # one head
    base = grams["softmax"]
    with pytest.raises(ValueError, match="same heads and rows"):
        an.gamma(gram, base)
    with pytest.raises(ValueError, match="over"):
        an.reduce_gram(gram, "columns")
