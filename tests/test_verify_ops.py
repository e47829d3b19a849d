"""Every relaxation of diffjax.verify.ops alone, over many random boxes (wide, narrow, negative,
positive, straddling zero, points): at sampled points and the vertices, the backward step's
linear bound Λ·f ≥ Λ_in·in + b holds for random Λ of both signs (so both planes are checked),
for CROWN's choice and for random alpha parameters, and the interval bounds contain f. The
references are NumPy/SciPy float64 formulas, not the code under test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from diffjax.verify import ops

REFERENCE = {
    ops.Exp: np.exp,
    ops.Square: np.square,
    ops.Reciprocal: lambda x: 1.0 / x,
    ops.InverseSquare: lambda x: 1.0 / np.square(x),
    ops.Rsqrt: lambda x: 1.0 / np.sqrt(x),
    ops.Gelu: lambda x: x * special.ndtr(x),
    ops.Tanh: np.tanh,
    ops.Logistic: special.expit,
    ops.Erf: special.erf,
}
POSITIVE = (ops.Reciprocal, ops.InverseSquare, ops.Rsqrt)


def _boxes(rng, n, positive=False):
    """n random intervals of every kind, as [n] arrays lo ≤ hi."""
    centre = rng.choice([-6, -1, 0, 1, 6], n) * rng.uniform(0, 1, n) + rng.normal(0, 0.3, n)
    width = 10.0 ** rng.uniform(-9, 1.3, n)
    width[: n // 10] = 0.0  # points
    lo, hi = centre - width * rng.uniform(0, 1, n), centre + width * rng.uniform(0, 1, n)
    if positive:
        lo, hi = np.abs(lo) + 1e-3, np.abs(lo) + 1e-3 + (hi - lo)
    return lo, hi


def _samples(rng, lo, hi, k=64):
    """[k + 2, n]: the two vertices and k uniform points of each box."""
    t = np.concatenate([[0.0, 1.0], rng.uniform(0, 1, k)])[:, None]
    return lo + t * (hi - lo)


def _check_unary(op, f, lo, hi, pts, param, rng):
    rows = 6
    lam = rng.normal(size=(rows, lo.size))
    (coeff,), _, bias, _ = op.backward(jnp.asarray(lam), jnp.abs(jnp.asarray(lam)),
                                       [(jnp.asarray(lo), jnp.asarray(hi))], param)  # fmt: skip
    coeff, bias = np.asarray(coeff), np.asarray(bias)
    for x in pts:
        exact = lam @ f(x)
        assert np.all(exact >= (coeff * x).sum(1) + bias), op
    ilo, ihi = op.interval((jnp.asarray(lo), jnp.asarray(hi)))
    values = f(pts)
    assert np.all(values >= np.asarray(ilo)) and np.all(values <= np.asarray(ihi)), op


@pytest.mark.parametrize("cls", list(REFERENCE))
def test_unary_planes_and_intervals_hold(cls):
    rng = np.random.default_rng(0)
    with jax.enable_x64():
        lo, hi = _boxes(rng, 400, positive=cls in POSITIVE)
        if cls is ops.Exp:
            lo, hi = np.clip(lo, -30, 30), np.clip(hi, -30, 30)
        pts = _samples(rng, lo, hi)
        op = cls()
        _check_unary(op, REFERENCE[cls], lo, hi, pts, None, rng)
        param = jnp.asarray(rng.normal(0, 3, op.init_param(6, lo.shape).shape))
        _check_unary(op, REFERENCE[cls], lo, hi, pts, param, rng)


def test_max_with_a_constant_holds():
    rng = np.random.default_rng(1)
    with jax.enable_x64():
        lo, hi = _boxes(rng, 400)
        c = rng.choice([0.0, -0.5, 1.0], lo.size)
        pts = _samples(rng, lo, hi)
        op = ops.MaxConst(jnp.asarray(c))
        f = lambda x: np.maximum(x, c)  # noqa: E731
        _check_unary(op, f, lo, hi, pts, None, rng)
        _check_unary(op, f, lo, hi, pts, jnp.asarray(rng.normal(0, 3, (6, lo.size))), rng)


@pytest.mark.parametrize("above", [True, False])
def test_step_holds(above):
    """1[x ≥ c] / 1[x ≤ c] (the JVP of max), with boxes whose ends sit exactly on c."""
    rng = np.random.default_rng(2)
    with jax.enable_x64():
        lo, hi = _boxes(rng, 400)
        c = rng.choice([0.0, -0.5, 1.0], lo.size)
        lo[:40], hi[40:80] = c[:40], c[40:80]
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        pts = np.clip(_samples(rng, lo, hi), lo, hi)  # lo + 1·(hi − lo) may round past hi = c
        op = ops.Step(jnp.asarray(c), above)
        f = lambda x: ((x >= c) if above else (x <= c)).astype(float)  # noqa: E731
        _check_unary(op, f, lo, hi, pts, None, rng)
        # Exact (a point interval) wherever the box misses c.
        ilo, ihi = op.interval((jnp.asarray(lo), jnp.asarray(hi)))
        miss = (lo > c) | (hi < c)
        assert np.all(np.asarray(ilo)[miss] == np.asarray(ihi)[miss])


def test_reciprocal_of_a_box_reaching_zero_is_unbounded_not_wrong():
    with jax.enable_x64():
        lo, hi = jnp.asarray([-1.0, 0.0]), jnp.asarray([1.0, 2.0])
        ilo, ihi = ops.Reciprocal().interval((lo, hi))
        assert np.all(np.isneginf(ilo)) and np.all(np.isposinf(ihi))
        _, _, bias, _ = ops.Reciprocal().backward(jnp.ones((1, 2)), jnp.ones((1, 2)), [(lo, hi)])
        assert np.isneginf(bias[0])


@pytest.mark.parametrize(
    "name, fn, xshape, yshape",
    [
        ("mul", jnp.multiply, (7, 5), (7, 5)),
        ("mul-broadcast", jnp.multiply, (7, 5), (7, 1)),
        ("qk", lambda q, k: jnp.einsum("hqd,hkd->hqk", q, k), (2, 4, 3), (2, 5, 3)),
        ("av", lambda a, v: jnp.einsum("hqk,hkd->hqd", a, v), (2, 4, 5), (2, 5, 3)),
    ],
)
def test_bilinear_mccormick_holds(name, fn, xshape, yshape):
    rng = np.random.default_rng(2)
    with jax.enable_x64():
        for trial in range(20):
            lx, ux = (b.reshape(xshape) for b in _boxes(rng, int(np.prod(xshape))))
            ly, uy = (b.reshape(yshape) for b in _boxes(rng, int(np.prod(yshape))))
            op = ops.Bilinear(fn)
            out = fn(jnp.asarray(lx), jnp.asarray(ly)).shape
            lam = rng.normal(size=(5, *out))
            param = None if trial % 2 else jnp.asarray(rng.normal(0, 3, (5, *out, 2)))
            (cx, cy), _, bias, _ = op.backward(
                jnp.asarray(lam), jnp.abs(jnp.asarray(lam)),
                [(jnp.asarray(lx), jnp.asarray(ux)), (jnp.asarray(ly), jnp.asarray(uy))], param,
            )  # fmt: skip
            ilo, ihi = op.interval((jnp.asarray(lx), jnp.asarray(ux)),
                                   (jnp.asarray(ly), jnp.asarray(uy)))  # fmt: skip
            for k in range(40):
                # Vertices of both boxes first (all-lower, all-upper, mixed), then inside.
                tx = rng.integers(0, 2, xshape) if k < 8 else rng.uniform(0, 1, xshape)
                ty = rng.integers(0, 2, yshape) if k < 8 else rng.uniform(0, 1, yshape)
                x, y = lx + tx * (ux - lx), ly + ty * (uy - ly)
                z = np.asarray(fn(jnp.asarray(x), jnp.asarray(y)))
                exact = (lam * z).reshape(5, -1).sum(1)
                plane = (np.asarray(cx) * x).reshape(5, -1).sum(1)
                plane = plane + (np.asarray(cy) * y).reshape(5, -1).sum(1) + np.asarray(bias)
                assert np.all(exact >= plane), name
                assert np.all(z >= np.asarray(ilo)) and np.all(z <= np.asarray(ihi)), name


def test_linear_backward_is_the_exact_transpose_and_interval_contains():
    rng = np.random.default_rng(3)
    with jax.enable_x64():
        w = jnp.asarray(rng.normal(size=(6, 4)))
        c = jnp.asarray(rng.normal(size=(3, 4)))

        def fn(x, y):  # an affine map of two operands, with a subtraction
            return x @ w - 2.0 * y + c

        def fn_abs(x, y):
            return x @ jnp.abs(w) + 2.0 * y + jnp.abs(c)

        zeros = [jnp.zeros((3, 6)), jnp.zeros((3, 4))]
        op = ops.Linear(fn, fn_abs, zeros)
        lam = jnp.asarray(rng.normal(size=(5, 3, 4)))
        (cx, cy), _, bias, _ = op.backward(lam, jnp.abs(lam), None)
        x, y = rng.normal(size=(3, 6)), rng.normal(size=(3, 4))
        exact = np.einsum("sij,ij->s", lam, fn(x, y))
        linear = np.einsum("sij,ij->s", cx, x) + np.einsum("sij,ij->s", cy, y) + bias
        np.testing.assert_allclose(linear, exact, rtol=1e-12, atol=1e-12)
        lx, ly = rng.normal(size=(3, 6)), rng.normal(size=(3, 4))
        ux, uy = lx + rng.uniform(0, 1, (3, 6)), ly + rng.uniform(0, 1, (3, 4))
        ilo, ihi = op.interval(
            (jnp.asarray(lx), jnp.asarray(ux)), (jnp.asarray(ly), jnp.asarray(uy))
        )
        for _ in range(50):
            x = lx + rng.uniform(0, 1, lx.shape) * (ux - lx)
            y = ly + rng.uniform(0, 1, ly.shape) * (uy - ly)
            z = np.asarray(fn(x, y))
            assert np.all(z >= ilo) and np.all(z <= ihi)


def _sum_exp_diff_case(rng, rows=5, heads=2, n=4):
    """Boxes of z [heads, n] (the softmax axis last), t's bounds from them, points, Λ."""
    centre = rng.normal(0, 2, (heads, n))
    width = 10.0 ** rng.uniform(-6, 0.5, (heads, n))
    zlo, zhi = centre - width, centre + width
    tlo = zlo[:, None, :] - zhi[:, :, None]  # t[h, i, j] = z_j − z_i
    thi = zhi[:, None, :] - zlo[:, :, None]
    pts = zlo + rng.uniform(0, 1, (64, heads, n)) * (zhi - zlo)
    lam = rng.normal(size=(rows, heads, n))
    return (zlo, zhi), (tlo, thi), pts, lam


def test_sum_exp_diff_holds_and_equals_its_three_step_composition():
    """S_i = Σ_j exp(z_j − z_i): Λ·S ≥ coeff·z + b at sampled z (CROWN's and random alpha
    planes), the interval contains S, and CROWN's step equals exp's step on the pairwise
    differences followed by their transpose, term by term."""
    rng = np.random.default_rng(4)
    with jax.enable_x64():
        for _ in range(5):
            zb, tb, pts, lam = _sum_exp_diff_case(rng)
            zb, tb = [tuple(map(jnp.asarray, b)) for b in (zb, tb)]
            op = ops.SumExpDiff(1, jnp.zeros(tb[0].shape))
            s_ref = np.exp(pts[:, :, None, :] - pts[:, :, :, None]).sum(-1)  # [P, h, i]
            lo, hi = map(np.asarray, op.interval(zb, tb))
            assert np.all(s_ref >= lo) and np.all(s_ref <= hi)
            for param in (None, jnp.asarray(rng.normal(0, 3, op.init_param(5, (2, 4)).shape))):
                (coeff,), _, bias, _ = op.backward(jnp.asarray(lam), jnp.abs(jnp.asarray(lam)),
                                                   [zb, tb], param)  # fmt: skip
                lin = np.einsum("shn,phn->ps", np.asarray(coeff), pts) + np.asarray(bias)
                exact = np.einsum("shn,phn->ps", lam, s_ref)
                assert np.all(exact >= lin - 1e-9 * np.abs(exact))
            # The composition: exp's planes per (i, j), Λ_i broadcast over j, then t → z.
            lam_t = jnp.broadcast_to(jnp.asarray(lam)[..., None], (5, 2, 4, 4))
            (ct,), (ct_abs,), b_t, ba_t = ops.Exp().backward(lam_t, jnp.abs(lam_t), [tb])
            (cz,), (cz_abs,), b, ba = op.backward(jnp.asarray(lam), jnp.abs(jnp.asarray(lam)),
                                                  [zb, tb])  # fmt: skip
            np.testing.assert_allclose(cz, ct.sum(-2) - ct.sum(-1), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(cz_abs, ct_abs.sum(-2) + ct_abs.sum(-1), rtol=1e-12)
            np.testing.assert_allclose(b, b_t, rtol=1e-12)
            np.testing.assert_allclose(ba, ba_t, rtol=1e-12)
