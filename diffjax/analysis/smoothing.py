"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): PREDICT and CERTIFY.

The smoothed classifier is g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I), f the base classifier.
If P(f(x + ε) = c_A) ≥ p_A > 1/2, then g(x + δ) = c_A for every ‖δ‖₂ < σ·Φ⁻¹(p_A) (their Theorem 1
with p_B = 1 − p_A). The Monte Carlo counts run under ``jit`` (``lax.map`` over batches of noise,
keys split explicitly); the statistics (Clopper–Pearson, the binomial test) run on the host.

Abstention is the label ``ABSTAIN`` (−1) with radius 0.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

Array = jax.Array
ABSTAIN = -1


def _check(sigma: float, n: int, alpha: float, batch: int) -> None:
    if not (isinstance(sigma, int | float) and sigma > 0 and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"the number of noise samples must be a positive integer, got {n!r}")
    if not (isinstance(alpha, int | float) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be a positive integer, got {batch!r}")


def noise_counts(model_fn: Callable[[Array], Array], image: Array, key: Array, *, n: int,
                 sigma: float, num_classes: int, batch: int = 256) -> Array:  # fmt: skip
    """Counts [num_classes] of argmax f(x + ε) over n draws ε ~ N(0, σ²I) (traceable).

    ``model_fn`` maps images [B, H, W, C] to logits [B, K]. The draws come in ⌈n/batch⌉ batches,
    batch i from ``fold_in(key, i)``; the padded tail of the last batch is not counted. The noisy
    images are not clipped to [0, 1] (Cohen et al. do not clip; the certificate is about ℓ2
    neighbourhoods in R^d).
    """
    steps = -(-n // batch)

    def one(i):
        eps = jax.random.normal(jax.random.fold_in(key, i), (batch, *image.shape), image.dtype)
        pred = jnp.argmax(model_fn(image[None] + sigma * eps), -1)
        keep = i * batch + jnp.arange(batch) < n
        return jnp.sum(jax.nn.one_hot(pred, num_classes, dtype=jnp.int32) * keep[:, None], 0)

    return jnp.sum(jax.lax.map(one, jnp.arange(steps)), 0)


def clopper_pearson_lower(successes: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    The p with P(Binomial(n, p) ≥ successes) = α, i.e. Beta(α; successes, n − successes + 1);
    0 when successes = 0, α^(1/n) when successes = n.
    """
    if successes == 0:
        return 0.0
    return float(stats.beta.ppf(alpha, successes, n - successes + 1))


@flax.struct.dataclass
class Certificate:
    """CERTIFY's answer for one image: ``label`` (ABSTAIN = −1) and ``radius`` (ℓ2, pixels),
    with the selection class, the estimation count n_A and the lower bound p̲_A."""

    label: int
    radius: float
    top: int
    count: int
    p_lower: float


def certify(model_fn, image: Array, key: Array, *, sigma: float, n0: int = 100, n: int = 10_000,
            alpha: float = 0.001, num_classes: int, batch: int = 256) -> Certificate:  # fmt: skip
    """CERTIFY (Cohen et al., Algorithm 1): select ĉ_A from n0 draws, estimate p̲_A from n fresh
    draws (independent keys), abstain if p̲_A < 1/2, else radius σ·Φ⁻¹(p̲_A)."""
    _check(sigma, n, alpha, batch)
    _check(sigma, n0, alpha, batch)
    k_select, k_estimate = jax.random.split(key)
    count = jax.jit(noise_counts, static_argnames=("n", "sigma", "num_classes", "batch"),
                    static_argnums=0)  # fmt: skip
    selection = count(model_fn, image, k_select, n=n0, sigma=sigma, num_classes=num_classes,
                      batch=batch)  # fmt: skip
    top = int(jnp.argmax(selection))
    counts = count(model_fn, image, k_estimate, n=n, sigma=sigma, num_classes=num_classes,
                   batch=batch)  # fmt: skip
    n_a = int(counts[top])
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    if p_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, top, n_a, p_lower)
    return Certificate(top, float(sigma * stats.norm.ppf(p_lower)), top, n_a, p_lower)


def predict(model_fn, image: Array, key: Array, *, sigma: float, n: int = 1000,
            alpha: float = 0.001, num_classes: int, batch: int = 256) -> int:  # fmt: skip
    """PREDICT (Cohen et al., Algorithm 2): the top class of n draws, or ABSTAIN when the
    two-sided binomial test of n_A against Binomial(n_A + n_B, 1/2) has p-value > α."""
    _check(sigma, n, alpha, batch)
    count = jax.jit(noise_counts, static_argnames=("n", "sigma", "num_classes", "batch"),
                    static_argnums=0)  # fmt: skip
    counts = np.asarray(count(model_fn, image, key, n=n, sigma=sigma, num_classes=num_classes,
                              batch=batch))  # fmt: skip
    order = np.argsort(-counts, kind="stable")
    n_a, n_b = int(counts[order[0]]), int(counts[order[1]]) if len(counts) > 1 else 0
    if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(order[0])
