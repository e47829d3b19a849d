"""Products of two perturbed operands: z = B(x, y) for B elementwise ``mul`` or ``dot_general``
(QKᵀ, A·V, LayerNorm's centred·rsqrt, RMSNorm's o·rsqrt).

B is a sum of products x_a·y_b with coefficient +1. For any corner (a, b) of the operands' box
([l_x, u_x] × [l_y, u_y]), x·y − (x·b + a·y − a·b) = (x − a)(y − b), which is ≥ 0 at the corners
(l, l) and (u, u) and ≤ 0 at (l, u) and (u, l) (McCormick). Summed over B's terms:

    B(x, b) + B(a, y) − B(a, b)  ≤ B(x, y)   for (a, b) = (l_x, l_y) or (u_x, u_y),
    B(x, b) + B(a, y) − B(a, b)  ≥ B(x, y)   for (a, b) = (l_x, u_y) or (u_x, l_y),

and any convex combination of two lower (upper) planes is again one. Every plane is written
with B itself on the bounds (its VJP at the corner gives both coefficient maps), so nothing of
the size of the product tensor (e.g. [N, d, N] for QKᵀ) is ever formed. CROWN mixes the two
planes half and half (symmetric in the corners; exact at a point); alpha-CROWN optimises the
mixing per output element and specification row. Interval: the mid-radius product
B(m_x, m_y) ± (B(|m_x|, r_y) + B(r_x, |m_y| + r_y)).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffjax.verify.ops.base import Op, widen
from diffjax.verify.ops.linear import _rows_sum


class Bilinear(Op):
    has_param = True

    def __init__(self, fn: Callable):
        self.fn = fn

    def interval(self, bx, by):
        (lx, ux), (ly, uy) = bx, by
        mx, rx, my, ry = (lx + ux) / 2, (ux - lx) / 2, (ly + uy) / 2, (uy - ly) / 2
        center = self.fn(mx, my)
        rad = self.fn(jnp.abs(mx), ry) + self.fn(rx, jnp.abs(my) + ry)
        return widen(center - rad, center + rad, self.fn(jnp.abs(mx) + rx, jnp.abs(my) + ry))

    def init_param(self, rows, shape):
        return jnp.zeros((rows, *shape, 2))

    def backward(self, lam, lam_abs, bounds, param=None):
        (lx, ux), (ly, uy) = bounds
        mix_lo = 0.5 if param is None else jax.nn.sigmoid(param[..., 0])
        mix_hi = 0.5 if param is None else jax.nn.sigmoid(param[..., 1])
        pos, neg = jnp.maximum(lam, 0.0), jnp.minimum(lam, 0.0)
        corners = (
            (lx, ly, pos * mix_lo),
            (ux, uy, pos * (1.0 - mix_lo)),
            (lx, uy, neg * mix_hi),
            (ux, ly, neg * (1.0 - mix_hi)),
        )
        cx, cy, bias = 0.0, 0.0, 0.0
        for a, b, w in corners:
            value, vjp = jax.vjp(self.fn, a, b)
            gx, gy = jax.vmap(vjp)(w)
            cx, cy, bias = cx + gx, cy + gy, bias - _rows_sum(w * value)
        mx = jnp.maximum(jnp.abs(lx), jnp.abs(ux))
        my = jnp.maximum(jnp.abs(ly), jnp.abs(uy))
        value, vjp = jax.vjp(self.fn, mx, my)
        ax, ay = jax.vmap(vjp)(lam_abs)
        return [cx, cy], [ax, ay], bias, _rows_sum(lam_abs * value)
