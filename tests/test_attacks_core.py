"""Attack building blocks against independent references: projections (float64 bisection, LP/QP
solvers, variational inequality), random starts (radius law), losses (NumPy formulas), APGD's
checkpoint schedule (the paper's recursion), accounting, and input/config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from diffjax import attacks
from diffjax.attacks import losses, projections
from diffjax.attacks.apgd import checkpoint_schedule

# ------------------------------------------------------------------------------ projections


def _l2_box_reference(v, lo, hi, eps):
    """float64 projection onto {‖δ‖₂ ≤ ε} ∩ [lo, hi] by bisection on the KKT scale t."""
    clipped = np.clip(v, lo, hi)
    if np.linalg.norm(clipped) <= eps:
        return clipped
    a, b = 0.0, 1.0
    for _ in range(200):
        t = (a + b) / 2
        a, b = (t, b) if np.linalg.norm(np.clip(t * v, lo, hi)) <= eps else (a, t)
    return np.clip(a * v, lo, hi)


def test_l2_ball_box_projection_is_exact():
    rng = np.random.default_rng(0)
    n, d = 64, 12
    x0 = rng.uniform(0, 1, (n, d))
    x0[:, :3] = rng.choice([0.0, 1.0, 0.02, 0.98], (n, 3))  # pixels on or near the box faces
    v = rng.normal(0, 0.4, (n, d)) * rng.choice([0.05, 1.0, 5.0], (n, 1))
    eps = rng.choice([0.0, 0.1, 0.5, 2.0], n)
    x = x0 + v
    got = jax.jit(jax.vmap(lambda x, x0, e: projections.project(x, x0, e, "l2")))(
        x.astype(np.float32), x0.astype(np.float32), eps.astype(np.float32)
    )
    got = np.asarray(got, np.float64)
    for i in range(n):
        want = x0[i] + _l2_box_reference(v[i], -x0[i], 1 - x0[i], eps[i])
        np.testing.assert_allclose(got[i], want, atol=2e-6)
        assert np.all(got[i] >= 0) and np.all(got[i] <= 1)
        assert np.linalg.norm(got[i] - x0[i]) <= eps[i] * (1 + 1e-6) + 1e-7
        # Variational inequality of a projection onto a convex set: <x − P, z − P> ≤ 0.
        for _ in range(20):
            u = rng.normal(0, 1, d)
            z = x0[i] + np.clip(
                u * eps[i] / max(np.linalg.norm(u), 1e-12) * rng.uniform(), -x0[i], 1 - x0[i]
            )
            assert np.dot(x[i] - got[i], z - got[i]) <= 1e-5


def test_linf_projection_is_the_coordinatewise_clip():
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, 1, (5, 4, 4, 3)).astype(np.float32)
    x = (x0 + rng.normal(0, 0.2, x0.shape)).astype(np.float32)
    got = jax.vmap(lambda a, b: projections.project(a, b, 0.05, "linf"))(x, x0)
    want = np.clip(np.clip(x, x0 - 0.05, x0 + 0.05), 0, 1)
    np.testing.assert_array_equal(np.asarray(got), want)


def _hyperplane_reference(p, w, b, norm):
    """Minimal ‖d‖ with w·(p + d) = b, 0 ≤ p + d ≤ 1: an LP (ℓ∞) or a QP (ℓ2) solved by SciPy."""
    n = p.size
    if norm == "linf":  # variables (d, r): minimise r
        c = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        res = scipy.optimize.linprog(
            c,
            A_ub=a_ub,
            b_ub=np.zeros(2 * n),
            A_eq=np.r_[w, 0.0][None],
            b_eq=[b - w @ p],
            bounds=[(-pi, 1 - pi) for pi in p] + [(0, None)],
            method="highs",
        )
        return res.status == 0, (res.fun if res.status == 0 else None)
    res = scipy.optimize.minimize(
        lambda d: d @ d,
        np.zeros(n),
        jac=lambda d: 2 * d,
        method="SLSQP",
        bounds=[(-pi, 1 - pi) for pi in p],
        constraints=[{"type": "eq", "fun": lambda d: w @ (p + d) - b, "jac": lambda d: w}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    feasible = res.success and abs(w @ (p + res.x) - b) < 1e-8
    return feasible, (np.sqrt(res.fun) if feasible else None)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_box_projection_matches_lp_and_qp(norm):
    rng = np.random.default_rng(2)
    fn = jax.jit(jax.vmap(lambda p, w, b: projections.project_hyperplane_box(p, w, b, norm)))
    n, d = 40, 6
    p = rng.uniform(0, 1, (n, d))
    p[:, 0] = rng.choice([0.0, 1.0], n)
    w = rng.normal(0, 1, (n, d))
    w[:, 1] = 0.0  # a coordinate the hyperplane ignores must not move
    b = np.einsum("nd,nd->n", w, p) + rng.normal(0, 1.0, n)
    got = np.asarray(fn(*(a.astype(np.float32) for a in (p, w, b))), np.float64)
    checked = 0
    for i in range(n):
        feasible, best = _hyperplane_reference(p[i], w[i], b[i], norm)
        x = p[i] + got[i]
        assert np.all(x >= -1e-6) and np.all(x <= 1 + 1e-6)
        assert got[i, 1] == 0
        if feasible:
            checked += 1
            assert abs(w[i] @ x - b[i]) < 1e-4 * (1 + np.abs(w[i]).sum())
            size = np.abs(got[i]).max() if norm == "linf" else np.linalg.norm(got[i])
            assert size == pytest.approx(best, rel=1e-4, abs=1e-6)
        else:  # unreachable: every coordinate pushed to the bound that helps most
            toward = np.sign(w[i]) * np.sign(b[i] - w[i] @ p[i])
            bound = np.where(toward > 0, 1.0, np.where(toward < 0, 0.0, p[i]))
            np.testing.assert_allclose(x, bound, atol=1e-6)
    assert 10 < checked < n  # both cases occur


# ------------------------------------------------------------------------------ random starts


def test_uniform_l2_start_has_the_ball_radius_law():
    d, eps, n = 3, 0.1, 4000
    x0 = jnp.full((1, 1, d), 0.5)
    keys = jax.random.split(jax.random.key(3), n)
    x = jax.jit(jax.vmap(lambda k: projections.uniform_start(k, x0, eps, "l2")))(keys)
    delta = np.asarray(x - x0, np.float64).reshape(n, d)
    r = np.linalg.norm(delta, axis=1) / eps
    assert r.max() <= 1 + 1e-6
    # Uniform in a d-ball: P(r ≤ ρ) = ρ^d, so r^d ~ U(0, 1); the radius law ε·u would fail.
    assert scipy.stats.kstest(r**d, "uniform").pvalue > 1e-3
    assert scipy.stats.kstest(r, "uniform").pvalue < 1e-6
    # Directions are isotropic: the mean unit vector is ~0.
    assert np.linalg.norm((delta / np.linalg.norm(delta, axis=1, keepdims=True)).mean(0)) < 0.06


def test_uniform_linf_start_is_uniform_per_coordinate():
    eps = 0.05
    x0 = jnp.full((8, 8, 3), 0.5)
    x = projections.uniform_start(jax.random.key(4), x0, eps, "linf")
    u = (np.asarray(x - x0, np.float64).ravel() + eps) / (2 * eps)
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_boundary_start_lies_on_the_sphere(norm):
    x0 = jnp.full((4, 4, 3), 0.5)
    x = projections.boundary_start(jax.random.key(5), x0, 0.1, norm)
    delta = np.asarray(x - x0, np.float64).ravel()
    size = np.abs(delta).max() if norm == "linf" else np.linalg.norm(delta)
    assert size == pytest.approx(0.1, rel=1e-5)


# ------------------------------------------------------------------------------ losses


def test_losses_match_numpy_formulas():
    rng = np.random.default_rng(6)
    z = rng.normal(0, 3, (50, 7)) - 10.0  # all logits negative: the one-hot-mask pitfall
    y = rng.integers(0, 7, 50)
    t = (y + 1 + rng.integers(0, 6, 50)) % 7
    z32 = z.astype(np.float32)
    zz = z32.astype(np.float64)
    rows = np.arange(50)
    others = np.where(np.eye(7, dtype=bool)[y], -np.inf, zz).max(1)
    srt = np.sort(zz, axis=1)
    got = jax.jit(
        lambda z, y, t: dict(
            ce=losses.cross_entropy(z, y),
            margin=losses.margin(z, y),
            dlr=losses.dlr(z, y),
            dlr_t=losses.dlr_targeted(z, y, t),
            hinge=losses.cw_hinge(z, y, 0.5, False),
            hinge_t=losses.cw_hinge(z, t, 0.5, True),
            ce_t=losses.objective("ce", True)(z, t),
        )
    )(z32, y, t)
    ce = np.log(np.exp(zz).sum(1)) - zz[rows, y]
    np.testing.assert_allclose(got["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(got["margin"], others - zz[rows, y], rtol=1e-5, atol=1e-5)
    dlr = -(zz[rows, y] - others) / (srt[:, -1] - srt[:, -3] + 1e-12)
    np.testing.assert_allclose(got["dlr"], dlr, rtol=1e-4, atol=1e-5)
    dlr_t = -(zz[rows, y] - zz[rows, t]) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)
    np.testing.assert_allclose(got["dlr_t"], dlr_t, rtol=1e-4, atol=1e-5)
    hinge = np.maximum(zz[rows, y] - others + 0.5, 0)
    np.testing.assert_allclose(got["hinge"], hinge, rtol=1e-5, atol=1e-5)
    others_t = np.where(np.eye(7, dtype=bool)[t], -np.inf, zz).max(1)
    hinge_t = np.maximum(others_t - zz[rows, t] + 0.5, 0)
    np.testing.assert_allclose(got["hinge_t"], hinge_t, rtol=1e-5, atol=1e-5)
    # Targeted objectives are maximised: −CE at the target.
    ce_t = np.log(np.exp(zz).sum(1)) - zz[rows, t]
    np.testing.assert_allclose(got["ce_t"], -ce_t, rtol=1e-5)


def test_margin_sign_with_negative_logits():
    z = jnp.array([[-5.0, -1.0, -3.0]])
    assert float(losses.margin(z, jnp.array([1]))[0]) == pytest.approx(-2.0)  # correct: < 0
    assert float(losses.margin(z, jnp.array([0]))[0]) == pytest.approx(4.0)


# ------------------------------------------------------------------------------ APGD schedule


def test_apgd_checkpoints_follow_the_paper_recursion():
    # p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), checkpoint w_j = ⌈p_j N⌉.
    n = 100
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1:
            break
        p.append(nxt)
    expected = [round(v * n) for v in p[1:]]
    is_check, window = checkpoint_schedule(n)
    assert list(np.flatnonzero(is_check) + 1) == expected == [22, 41, 57, 70, 80, 87, 93, 99]
    assert list(window[is_check]) == list(np.diff([0, *expected]))


# ------------------------------------------------------------------------------ accounting


def test_summary_counts_and_definitions():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    clean = np.array([0, 1, 2, 3, 0, 1, 0, 0])  # 6 correct, last two wrong from the start
    adv = np.array([1, 1, 0, 3, 2, 0, 1, 0])  # fooled: 0, 2, 4, 5 ; still right: 1, 3
    linf = np.array([0.1, 0.0, 0.3, 0.0, 0.2, 0.4, 0.0, 0.0])
    l2 = 2 * linf
    s = attacks.summarize(labels, clean, adv, linf, l2, np.arange(8))
    assert (s.examples, s.clean_correct, s.fooled, s.robust) == (8, 6, 4, 2)
    assert s.clean_accuracy == 6 / 8 and s.robust_accuracy == 2 / 8 and s.asr == 4 / 6
    assert s.mean_linf == pytest.approx(0.25) and s.median_linf == pytest.approx(0.25)
    assert s.mean_l2 == pytest.approx(0.5)
    assert s.robust_accuracy == pytest.approx(s.clean_accuracy * (1 - s.asr))
    assert s.mean_model_calls == 3.5
    # Targeted: only hits on the target count; a wrong non-target prediction is not robust.
    targets = np.array([1, 2, 0, 0, 2, 3, 0, 0])
    st = attacks.summarize(labels, clean, adv, linf, l2, np.ones(8), targets)
    assert (st.fooled, st.robust) == (3, 2)  # examples 0, 2, 4 hit their targets


def test_wilson_interval_closed_forms():
    z = 1.959963984540054
    lo, hi = attacks.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(z**2 / (10 + z**2))
    lo, hi = attacks.wilson_interval(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5)
    assert hi - lo == pytest.approx(2 * z * math.sqrt(0.25 / 10 + z**2 / 400) / (1 + z**2 / 10))
    assert attacks.wilson_interval(0, 0) is None


@pytest.mark.parametrize("k1, n1, k2, n2, published", [
    (56, 70, 48, 80, (0.0524, 0.3339)),
    (9, 10, 3, 10, (0.1705, 0.8090)),
    (6, 7, 2, 7, (0.0582, 0.8062)),
    (5, 56, 0, 29, (-0.0381, 0.1926)),
    (0, 10, 0, 20, (-0.1611, 0.2775)),
    (10, 10, 0, 20, (0.6791, 1.0000)),
])  # fmt: skip
def test_difference_interval_is_newcombes_published_method_10(k1, n1, k2, n2, published):
    """Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10 (4 decimals)."""
    from diffjax.attacks.accounting import difference_interval

    assert np.round(difference_interval(k1, n1, k2, n2), 4).tolist() == list(published)
    assert difference_interval(1, 0, 1, 2) is None


def test_summary_rejects_bad_input():
    with pytest.raises(ValueError):
        attacks.summarize([], [], [], [], [], [])
    with pytest.raises(ValueError):
        attacks.summarize([0, 1], [0], [0, 1], [0, 0], [0, 0], [1, 1])


def test_summary_without_correct_examples():
    s = attacks.summarize([0, 1], [1, 0], [1, 0], [0, 0], [0, 0], [1, 1])
    assert s.asr is None and s.asr_ci is None and s.mean_l2 is None and s.robust_accuracy == 0


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: attacks.PGDConfig(eps=-1 / 255),
        lambda: attacks.PGDConfig(eps=float("nan")),
        lambda: attacks.PGDConfig(eps=float("inf")),
        lambda: attacks.PGDConfig(eps="0.1"),
        lambda: attacks.PGDConfig(eps=0.1, norm="l1"),
        lambda: attacks.PGDConfig(eps=0.1, steps=-1),
        lambda: attacks.PGDConfig(eps=0.1, restarts=0),
        lambda: attacks.PGDConfig(eps=0.1, restarts=2, random_start=False),
        lambda: attacks.PGDConfig(eps=0.1, loss="hinge"),
        lambda: attacks.PGDConfig(eps=0.1, step_size=0.0),
        lambda: attacks.APGDConfig(eps=-0.1),
        lambda: attacks.APGDConfig(eps=0.1, loss="margin"),
        lambda: attacks.APGDConfig(eps=0.1, rho=0),
        lambda: attacks.CWConfig(confidence=-1),
        lambda: attacks.CWConfig(learning_rate=0),
        lambda: attacks.CWConfig(binary_search_steps=0),
        lambda: attacks.SquareConfig(eps=0.1, p_init=0),
        lambda: attacks.FABConfig(eps=-0.1),
        lambda: attacks.AutoAttackConfig(eps=0.1, version="rand", stages=("square",)),
        lambda: attacks.AutoAttackConfig(eps=0.1, version="plus"),
        lambda: attacks.AutoAttackConfig(eps=0.1, eot_iter=0),
        lambda: attacks.APGDConfig(eps=0.1, eot_iter=0),
        lambda: attacks.SquareConfig(eps=0.1, norm="l1"),
        lambda: attacks.AutoAttackConfig(eps=0.1, stages=("pgd",)),
    ],
)
def test_bad_configs_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make", [attacks.PGDConfig, attacks.APGDConfig, attacks.SquareConfig,
                                  attacks.FABConfig, attacks.AutoAttackConfig])  # fmt: skip
def test_linf_radius_on_the_255_scale_is_refused(make):
    with pytest.raises(ValueError, match=r"eps = 8 \(linf\) is above 1.*did you mean 8/255"):
        make(eps=8)
    make(eps=1.0)  # the whole range: allowed (a sanity bound, not a refusal)
    make(eps=8, norm="l2")  # ℓ2: bounded by the image's diagonal, known at the call


def test_l2_radius_beyond_the_image_diagonal_is_refused():
    # A 2×2×3 image: the [0, 1] cube's diagonal is √12 = 3.464.
    x, y = np.full((2, 2, 2, 3), 0.5, np.float32), np.array([0, 1])
    cfg = attacks.PGDConfig(eps=3.5, norm="l2", steps=1)
    with pytest.raises(ValueError, match=r"√12 = 3\.464.*did you mean 3\.5/255"):
        attacks.pgd(_linear(), x, y, jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="did you mean 4/255"):
        attacks.attack_epsilons(attacks.pgd, _linear(), x, y, jax.random.key(0),
                                attacks.PGDConfig(0.0, steps=1), epsilons=[1 / 255, 4])  # fmt: skip
    attacks.pgd(_linear(), x, y, jax.random.key(0), attacks.PGDConfig(eps=3.4, norm="l2", steps=1))


def _linear(k=4):
    w = jnp.asarray(np.random.default_rng(7).normal(size=(k, 12)), jnp.float32)
    return lambda x: x.reshape(x.shape[0], -1) @ w.T


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(images=np.full((2, 2, 2, 3), 1.5, np.float32)), r"\[0, 1\]"),
        (dict(images=np.full((2, 2, 2, 3), np.nan, np.float32)), "NaN"),
        (dict(images=np.zeros((2, 2, 2, 3), np.uint8)), "floating"),
        (dict(images=np.zeros((2, 12), np.float32)), "B, H, W, C"),
        (dict(images=np.zeros((0, 2, 2, 3), np.float32), labels=np.zeros(0, int)), "empty"),
        (dict(labels=np.array([0, 1, 2])), "labels"),
        (dict(labels=np.array([0, 4])), "labels must lie"),
        (dict(labels=np.array([0.0, 1.0])), "labels"),
        (dict(key=np.array([1, 2, 3], np.uint32)), "key"),
        (dict(ids=np.array([0, -1])), "ids"),
        (dict(targets=np.array([1, 2])), "untargeted"),
        (dict(model_fn=lambda x: x.reshape(x.shape[0], -1)[:, :4][None]), "logits"),
    ],
)
def test_bad_inputs_raise_before_running(change, message):
    args = dict(
        model_fn=_linear(),
        images=np.full((2, 2, 2, 3), 0.5, np.float32),
        labels=np.array([0, 1]),
        key=jax.random.key(0),
    )
    extra = {k: change.pop(k) for k in ("targets", "ids") if k in change}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        attacks.pgd(
            args["model_fn"],
            args["images"],
            args["labels"],
            args["key"],
            attacks.PGDConfig(eps=0.1, steps=1),
            **extra,
        )


def test_targeted_inputs_are_checked():
    x, y = np.full((2, 2, 2, 3), 0.5, np.float32), np.array([0, 1])
    cfg = attacks.PGDConfig(eps=0.1, steps=1, targeted=True)
    with pytest.raises(ValueError, match="needs targets"):
        attacks.pgd(_linear(), x, y, jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="differ"):
        attacks.pgd(_linear(), x, y, jax.random.key(0), cfg, targets=np.array([1, 1]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        attacks.apgd(
            _linear(3),
            x,
            y,
            jax.random.key(0),
            attacks.APGDConfig(0.1, loss="dlr-targeted", num_targets=2),
        )
