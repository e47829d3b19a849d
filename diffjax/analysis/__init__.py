"""Exact sensitivity analysis: per-branch Jacobians, alignment, the paper's theorems, Lipschitz
constants (exact local, spectra, empirical) and depth/noise cancellation.

See the README, section "Exact sensitivity analysis", for definitions and decisions.
"""

from diffjax.analysis import certified, smoothing
from diffjax.analysis.alignment import (
    Alignment,
    alignment,
    gamma,
    head_rms_norms,
    negative_frequency,
    reduce_gram,
)
from diffjax.analysis.depth import DepthProfile, cancellation, depth_profile, paper_bound
from diffjax.analysis.functions import (
    WRT,
    after,
    attention_layer,
    attention_maps,
    block,
    layer_input,
    logits,
    stack,
    with_dtype,
)
from diffjax.analysis.jacobians import (
    Branches,
    Gram,
    branch_grams,
    branch_jacobians,
    branch_jvp,
    branch_outputs,
    branch_vjp,
)
from diffjax.analysis.lanczos import (
    SingularTriplets,
    lanczos_svd,
    linear_operator,
    power_iteration,
)
from diffjax.analysis.lipschitz import (
    LipschitzEstimate,
    exact_local_lipschitz,
    jacobian_matrix,
    jacobian_spectrum,
    pgd_lipschitz,
    sampled_lipschitz,
    top_singular_values,
)
from diffjax.analysis.summary import layer_lipschitz, layer_summary
from diffjax.analysis.theory import (
    TheoryCheck,
    check_theory,
    lemma1_norm,
    theorem1_extremes,
    theorem2_ratio,
    theorem3_threshold,
)

__all__ = [
    "after",
    "layer_lipschitz",
    "layer_summary",
    "WRT",
    "Alignment",
    "Branches",
    "DepthProfile",
    "Gram",
    "LipschitzEstimate",
    "SingularTriplets",
    "TheoryCheck",
    "alignment",
    "attention_layer",
    "attention_maps",
    "block",
    "branch_grams",
    "branch_jacobians",
    "branch_jvp",
    "branch_outputs",
    "branch_vjp",
    "cancellation",
    "certified",
    "smoothing",
    "check_theory",
    "depth_profile",
    "exact_local_lipschitz",
    "gamma",
    "head_rms_norms",
    "jacobian_matrix",
    "jacobian_spectrum",
    "lanczos_svd",
    "layer_input",
    "lemma1_norm",
    "linear_operator",
    "logits",
    "negative_frequency",
    "paper_bound",
    "pgd_lipschitz",
    "power_iteration",
    "reduce_gram",
    "sampled_lipschitz",
    "stack",
    "theorem1_extremes",
    "theorem2_ratio",
    "theorem3_threshold",
    "top_singular_values",
    "with_dtype",
]
