"""Per-example best-iterate tracking for the ε-bounded gradient attacks (PGD, APGD).

Every evaluated iterate is a candidate; the kept one is the best in the order (success, loss):
any successful iterate beats every unsuccessful one, and among equals the higher loss wins. So the
returned point is successful whenever any iterate of any restart was (restarts are aggregated per
example, never per batch), and an unsuccessful example returns its highest-loss point. The clean
input is the first candidate, so an already-misclassified example comes back unperturbed.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class Best:
    """The best candidate of one example so far: image, its logits [K], loss, success."""

    x: Array
    logits: Array
    loss: Array
    success: Array

    def update(self, x: Array, logits: Array, loss: Array, success: Array) -> Best:
        better = (success & ~self.success) | ((success == self.success) & (loss > self.loss))
        new = Best(x, logits, loss, success)
        return jax.tree.map(lambda n, o: jnp.where(better, n, o), new, self)
