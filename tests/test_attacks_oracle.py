"""Attacks against a linear multiclass classifier, whose minimal distances are known in closed form.

For z = Wx + b, the distance from x to the boundary between its class y and class j is
(z_y − z_j)/‖w_y − w_j‖_q (q = 1 for ℓ∞, 2 for ℓ2), and the minimal distance to a
misclassification is the minimum over j. Every example is built (float64, pseudo-inverse) so that
the minimiser x + δ* and its whole ε-neighbourhood stay inside the [0, 1] box, i.e. the box never
changes the answer. Half of each batch sits at distance ε/1.02 (an attack at radius ε must fool
them), half at ε/0.98 (nothing may fool them). Every returned example is re-checked here, outside
the attack code, with float64 NumPy: inside the ε-ball and the box, reported norms and logits
correct, success flag equal to the re-evaluated prediction.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax import attacks

K, SHAPE = 5, (4, 4, 3)
D = int(np.prod(SHAPE))
EPS = {"linf": 1 / 255, "l2": 0.02}
NEAR, FAR = 1.02, 0.98  # ε / distance for the examples that must / must not be fooled
HALF = 8

# Large weights make the logit gaps to the far classes large (≥ 20), so the cross-entropy
# gradient points at the nearest class alone.
W = np.random.default_rng(0).normal(0, 10, (K, D)).astype(np.float32).astype(np.float64)
B = -W @ np.full(D, 0.5)  # logits 0 at the grey image
W32, B32 = jnp.asarray(W, jnp.float32), jnp.asarray(B, jnp.float32)


def linear(x):
    return x.reshape(x.shape[0], -1) @ W32.T + B32


def logits64(x):
    return np.asarray(x, np.float64).reshape(len(x), -1) @ W.T + B


def q_norm(v, norm):
    return np.abs(v).sum(-1) if norm == "linf" else np.linalg.norm(v, axis=-1)


def min_distance(x, y, norm):
    """Closed-form minimal ℓp distance to a misclassification, and the minimiser, per example."""
    z = logits64(x)
    dist, step = [], []
    for zi, yi in zip(z, y, strict=True):
        best = None
        for j in range(K):
            if j != yi:
                dw = W[j] - W[yi]
                d = (zi[yi] - zi[j]) / q_norm(dw, norm)
                if best is None or d < best[0]:
                    best = (d, d * (np.sign(dw) if norm == "linf" else dw / np.linalg.norm(dw)))
        dist.append(best[0])
        step.append(best[1])
    return np.array(dist), np.array(step)


def make_batch(norm, eps=None, near=NEAR, far=FAR, seed=1):
    """16 examples: the first 8 at distance ε/near, the last 8 at ε/far; all other classes ten
    times farther, so the nearest class is also the second most likely."""
    eps = EPS[norm] if eps is None else eps
    rng = np.random.default_rng(seed)
    target_dist = np.r_[np.full(HALF, eps / near), np.full(HALF, eps / far)]
    xs, ys = [], []
    for i, d in enumerate(target_dist):
        y = i % K
        nearest = (y + 1 + rng.integers(K - 1)) % K
        s = np.zeros(K)
        for j in range(K):
            if j != y:
                s[j] = -(1.0 if j == nearest else 10.0) * d * q_norm(W[y] - W[j], norm)
        xs.append(0.5 + np.linalg.pinv(W) @ s)  # logits exactly s (W has full row rank)
        ys.append(y)
    x = np.stack(xs).astype(np.float32).reshape(-1, *SHAPE)
    y = np.array(ys, np.int32)
    dist, step = min_distance(x, y, norm)
    np.testing.assert_allclose(dist, target_dist, rtol=1e-4)  # float32 rounding only
    flat = x.reshape(len(x), -1).astype(np.float64)
    # Precondition: the ε-ball (hence the minimiser) lies inside the box for every example.
    assert flat.min() > 1.1 * eps and flat.max() < 1 - 1.1 * eps
    assert np.all((flat + 1.1 * step >= 0) & (flat + 1.1 * step <= 1))
    return x, y, dist


def recheck(result, x, y, eps, norm, targets=None):
    """Independent checks of every returned example (float64, outside the attack code)."""
    adv = np.asarray(result.adv_images, np.float64)
    delta = (adv - np.asarray(x, np.float64)).reshape(len(x), -1)
    assert adv.shape == x.shape
    assert np.all(adv >= 0) and np.all(adv <= 1)
    linf, l2 = np.abs(delta).max(1), np.linalg.norm(delta, axis=1)
    if eps is not None:
        size = linf if norm == "linf" else l2
        assert np.all(size <= eps * (1 + 1e-5) + 1e-7), size.max() / eps
    np.testing.assert_allclose(result.linf, linf, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.l2, l2, rtol=1e-5, atol=1e-7)
    z = logits64(adv)
    np.testing.assert_allclose(result.logits, z, atol=2e-4)
    np.testing.assert_allclose(result.clean_logits, logits64(x), atol=2e-4)
    pred = z.argmax(1)
    want = pred == targets if targets is not None else pred != y
    np.testing.assert_array_equal(np.asarray(result.success), want)
    assert np.all(np.asarray(result.model_calls) >= 1)


NEAR_HALF = np.r_[np.ones(HALF, bool), np.zeros(HALF, bool)]

CASES = {
    "pgd-linf": (attacks.pgd, attacks.PGDConfig(EPS["linf"], "linf", steps=20)),
    "pgd-l2": (attacks.pgd, attacks.PGDConfig(EPS["l2"], "l2", steps=30, step_size=EPS["l2"] / 4)),
    "apgd-ce-linf": (attacks.apgd, attacks.APGDConfig(EPS["linf"], "linf", steps=20)),
    "apgd-ce-l2": (attacks.apgd, attacks.APGDConfig(EPS["l2"], "l2", steps=20)),
    "fab-t-linf": (attacks.fab_targeted, attacks.FABConfig(EPS["linf"], "linf", 20, num_targets=4)),
    # APGD-T first, so that it has to fool the near half itself; then every other stage must
    # fail on the far half.
    "autoattack-linf": (
        attacks.autoattack,
        attacks.AutoAttackConfig(
            EPS["linf"],
            stages=("apgd-t", "apgd-ce", "fab-t", "square"),
            steps=20,
            num_targets=4,
            square_queries=300,
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fools_just_above_the_minimal_distance_and_never_below(name):
    attack, config = CASES[name]
    x, y, _ = make_batch(config.norm)
    result = attack(linear, x, y, jax.random.key(0), config)
    recheck(result, x, y, config.eps, config.norm)
    np.testing.assert_array_equal(np.asarray(result.success), NEAR_HALF)
    if name.startswith("autoattack"):
        assert np.all(np.asarray(result.extras["stage"])[:HALF] == 0)  # APGD-T fools them
        assert np.all(np.asarray(result.extras["stage"])[HALF:] == -1)


def test_square_is_gradient_free_but_reaches_the_optimal_vertex():
    # Without any gradient, Square's random search gets within 8 % of the exact ℓ∞ minimum.
    eps = EPS["linf"]
    x, y, _ = make_batch("linf", eps, near=1.08)
    result = attacks.square(linear, x, y, jax.random.key(0), attacks.SquareConfig(eps, 1500))
    recheck(result, x, y, eps, "linf")
    np.testing.assert_array_equal(np.asarray(result.success), NEAR_HALF)
    calls = np.asarray(result.model_calls)
    assert np.all(calls[:HALF] < 1500) and np.all(calls[HALF:] == 1502)  # stops once fooled


def test_cw_finds_the_minimal_l2_distance():
    x, y, dist = make_batch("l2")
    config = attacks.CWConfig(max_iterations=1000, learning_rate=1e-3)
    result = attacks.cw_l2(linear, x, y, jax.random.key(0), config)
    recheck(result, x, y, None, "l2")
    assert np.all(np.asarray(result.success))
    l2 = np.asarray(result.l2, np.float64)
    assert np.all(l2 >= dist * (1 - 1e-5))  # nothing beats the closed-form minimum
    assert np.all(l2 <= dist * 1.01), np.max(l2 / dist)
    assert np.all(np.asarray(result.extras["const"]) < 1e9)


def test_cw_targeted_reaches_the_target():
    x, y, _ = make_batch("l2")
    targets = (y + 2) % K
    config = attacks.CWConfig(binary_search_steps=6, max_iterations=300, targeted=True)
    result = attacks.cw_l2(linear, x, y, jax.random.key(0), config, targets=targets)
    recheck(result, x, y, None, "l2", targets=targets)
    assert np.all(np.asarray(result.success))


def test_targeted_pgd_with_a_user_loss():
    # A user-supplied objective to maximise (the target's logit margin) drives a targeted PGD;
    # success means reaching the target.
    x, y, _ = make_batch("linf")
    targets = (y + 2) % K

    def target_margin(logits, targets):
        return attacks.margin(logits, targets) * -1.0

    config = attacks.PGDConfig(0.3, "linf", steps=20, loss=target_margin, targeted=True)
    result = attacks.pgd(linear, x, y, jax.random.key(0), config, targets=targets)
    recheck(result, x, y, 0.3, "linf", targets=targets)
    assert np.all(np.asarray(result.success))


def test_clean_misclassified_examples_come_back_unperturbed():
    x, y, _ = make_batch("linf")
    wrong = (y + 1) % K
    result = attacks.pgd(linear, x, wrong, jax.random.key(0), CASES["pgd-linf"][1])
    np.testing.assert_array_equal(np.asarray(result.adv_images), x)
    assert np.all(np.asarray(result.success)) and np.all(np.asarray(result.model_calls) == 1)


def test_same_key_same_result_and_independent_of_batching():
    x, y, _ = make_batch("linf")
    config = CASES["pgd-linf"][1]
    key = jax.random.key(7)
    ids = np.arange(100, 100 + len(x))
    first = attacks.pgd(linear, x, y, key, config, ids=ids)
    again = attacks.pgd(linear, x, y, key, config, ids=ids)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # One small step: the end point still shows the random start.
    one_step = attacks.PGDConfig(EPS["linf"], steps=1, step_size=EPS["linf"] / 10)
    a = attacks.pgd(linear, x, y, key, one_step, ids=ids).adv_images
    b = attacks.pgd(linear, x, y, jax.random.key(8), one_step, ids=ids).adv_images
    assert not np.array_equal(np.asarray(a), np.asarray(b))

    perm = np.random.default_rng(0).permutation(len(x))
    shuffled = attacks.pgd(linear, x[perm], y[perm], key, config, ids=ids[perm])
    sub = np.array([3, 12, 5, 9])
    subset = attacks.pgd(linear, x[sub], y[sub], key, config, ids=ids[sub])
    for part, index in ((shuffled, perm), (subset, sub)):
        np.testing.assert_array_equal(np.asarray(part.success), np.asarray(first.success)[index])
        np.testing.assert_allclose(part.adv_images, np.asarray(first.adv_images)[index], atol=1e-6)
        np.testing.assert_array_equal(part.model_calls, np.asarray(first.model_calls)[index])


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
def test_sharded_batch_gives_the_same_results():
    x, y, _ = make_batch("linf")
    config = CASES["apgd-ce-linf"][1]
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    shard = NamedSharding(mesh, P("data"))
    plain = attacks.apgd(linear, x, y, jax.random.key(0), config)
    sharded = attacks.apgd(
        linear, jax.device_put(x, shard), jax.device_put(y, shard), jax.random.key(0), config
    )
    assert len(sharded.adv_images.sharding.device_set) == jax.device_count()
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded), strict=True):
        # Two programs (a sharded and a plain GEMM) may round the float32 logits differently in
        # the last bits; the logits are sums of terms of magnitude ~20 (ulp 1.9e-6), so about ten
        # of those ulps is the tolerance.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=2e-5)


def test_standard_autoattack_l2_has_four_stages_and_each_respects_the_boundary():
    assert attacks.AutoAttackConfig(0.5, "l2").sequence == ("apgd-ce", "apgd-t", "fab-t", "square")
    eps = EPS["l2"]
    x, y, _ = make_batch("l2")
    # APGD-T first so it must fool the near half; the far half then goes through APGD-CE, FAB-T
    # and Square-ℓ2, none of which may fool it.
    config = attacks.AutoAttackConfig(eps, "l2", stages=("apgd-t", "apgd-ce", "fab-t", "square"),
                                      steps=20, num_targets=4, square_queries=200)  # fmt: skip
    result = attacks.autoattack(linear, x, y, jax.random.key(0), config)
    recheck(result, x, y, eps, "l2")
    np.testing.assert_array_equal(np.asarray(result.success), NEAR_HALF)
    np.testing.assert_array_equal(np.asarray(result.extras["stage"]), np.where(NEAR_HALF, 0, -1))
    # The far half ran every stage in full: 1 + 4·21 (APGD-T) + 21 + 4·40 (FAB-T) + 201 (Square).
    np.testing.assert_array_equal(np.asarray(result.model_calls)[HALF:], 1 + 84 + 21 + 160 + 201)


def _smooth_linear(k=5, shape=(16, 16, 3), seed=0):
    """A linear classifier whose weights are constant on 4×4 pixel blocks (the low-frequency
    structure of network gradients that Square's windows exploit), and a builder of examples at
    known ℓ2 distances from its boundary (as :func:`make_batch`)."""
    d = int(np.prod(shape))
    coarse = np.random.default_rng(seed).normal(0, 10, (k, shape[0] // 4, shape[1] // 4, shape[2]))
    w = np.stack([np.kron(c, np.ones((4, 4, 1))) for c in coarse]).reshape(k, d)
    w = w.astype(np.float32).astype(np.float64)
    b = -w @ np.full(d, 0.5)
    w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

    def model(x):
        return x.reshape(x.shape[0], -1) @ w32.T + b32

    def batch(eps, near, far, seed=1):
        rng = np.random.default_rng(seed)
        dist = np.r_[np.full(HALF, eps / near), np.full(HALF, eps / far)]
        xs, ys = [], []
        for i, di in enumerate(dist):
            yi = i % k
            nearest = (yi + 1 + rng.integers(k - 1)) % k
            s = np.array([0.0 if j == yi else -(1.0 if j == nearest else 10.0) * di
                          * np.linalg.norm(w[yi] - w[j]) for j in range(k)])  # fmt: skip
            xs.append(0.5 + np.linalg.pinv(w) @ s)
            ys.append(yi)
        x = np.stack(xs).astype(np.float32).reshape(-1, *shape)
        z = x.reshape(len(x), -1).astype(np.float64) @ w.T + b
        y = np.array(ys, np.int32)
        for zi, yi, di in zip(z, y, dist, strict=True):  # closed-form distance, float32 inputs
            gaps = [(zi[yi] - zi[j]) / np.linalg.norm(w[yi] - w[j]) for j in range(k) if j != yi]
            assert min(gaps) == pytest.approx(di, rel=1e-3)
        assert x.min() > eps and x.max() < 1 - eps  # the box never binds
        return x, y

    return model, w, b, batch


def test_square_l2_fools_at_twice_the_minimal_distance_without_gradients():
    model, w, b, batch = _smooth_linear()
    eps = 0.1
    x, y = batch(eps, near=2.0, far=0.98)
    result = attacks.square(
        model, x, y, jax.random.key(0), attacks.SquareConfig(eps, 2000, norm="l2")
    )
    adv = np.asarray(result.adv_images, np.float64)
    l2 = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
    assert np.all(l2 <= eps * (1 + 1e-5))
    pred = (adv.reshape(len(x), -1) @ w.T + b).argmax(1)
    np.testing.assert_array_equal(np.asarray(result.success), pred != y)
    np.testing.assert_array_equal(np.asarray(result.success), NEAR_HALF)
    calls = np.asarray(result.model_calls)
    assert np.all(calls[:HALF] < 2002) and np.all(calls[HALF:] == 2002)  # stops once fooled


def test_rand_autoattack_with_eot_on_a_randomised_linear_model():
    # The randomness rescales the logits by a factor in [1, 2): predictions never change, so the
    # near half must be fooled and the far half never, and every draw is a model call.
    def randomised(x, keys):
        scale = 1.0 + jax.vmap(jax.random.uniform)(keys)
        return linear(x) * scale[:, None]

    eps = EPS["linf"]
    x, y, _ = make_batch("linf")
    config = attacks.AutoAttackConfig(eps, version="rand", steps=20, eot_iter=3)
    assert config.sequence == ("apgd-ce", "apgd-dlr")
    result = attacks.autoattack(randomised, x, y, jax.random.key(0), config)
    adv = np.asarray(result.adv_images, np.float64)
    assert np.all(np.abs(adv - x).reshape(len(x), -1).max(1) <= eps * (1 + 1e-5))
    fooled = logits64(adv).argmax(1) != y  # deterministic re-check: scaling keeps the argmax
    np.testing.assert_array_equal(fooled, NEAR_HALF)
    np.testing.assert_array_equal(np.asarray(result.success), NEAR_HALF)
    np.testing.assert_array_equal(np.asarray(result.model_calls)[HALF:], 1 + 2 * 21 * 3)
    with pytest.raises(ValueError, match="keys"):
        attacks.autoattack(linear, x, y, jax.random.key(0), config)  # not randomised
