"""Relaxations, one module per operation (auto_LiRPA ``operators/`` style).

Every operation gives (a) interval bounds of its output from interval bounds of its inputs
(``interval``) and (b) one backward step of linear bound propagation (``backward``): given
coefficients Λ [S, *out] of a linear function of its output, coefficients on its inputs and a bias
[S] such that, for every input in the given bounds, Λ·out ≥ Σ Λ_in·in + bias. Each module's
docstring states why its step is sound.
"""

from diffjax.verify.ops.base import DELTA, Op
from diffjax.verify.ops.bilinear import Bilinear
from diffjax.verify.ops.convex import Exp, InverseSquare, MaxConst, Reciprocal, Rsqrt, Square
from diffjax.verify.ops.linear import Linear
from diffjax.verify.ops.smooth import Erf, Gelu, Logistic, Tanh
from diffjax.verify.ops.softmax import SumExpDiff
from diffjax.verify.ops.step import Step

__all__ = ["DELTA", "Bilinear", "Erf", "Exp", "Gelu", "InverseSquare", "Linear", "Logistic",
           "MaxConst", "Op", "Reciprocal", "Rsqrt", "Square", "Step", "SumExpDiff",
           "Tanh"]  # fmt: skip
