"""The language experiment: DA LM vs parameter-matched standard LM (docs/language.md).

Attacks target the retrieval answer of ``examples`` held-out retrieval prompts; every context
byte (pairs and filler, not the query "|k:") is editable. ``pgd_eps`` are ℓ2 radii per token
and ``pgd_linf`` ℓ∞ radii, in units of the RMS norm of an embedding row; ``hotflip_budgets``
are numbers of substituted bytes; GCG aims at a wrong digit (the answer + 1 mod 10).
"""

import ml_collections

from diffjax.experiments.configs import recipes

PRESETS = ("mini", "cpu", "paper", "gpu")


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"language takes one of {PRESETS}, got {arg!r}")
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c = ml_collections.ConfigDict()
    c.experiment = "language"
    c.preset = arg
    c.lm_train = recipes.lm_training(arg)
    c.seed = 0
    c.examples = p(mini=4, cpu=64, paper=512)
    c.pgd_eps = p(mini=(0.5,), cpu=(0.25, 0.5, 1.0), paper=(0.125, 0.25, 0.5, 1.0))
    c.pgd_linf = p(mini=(0.1,), cpu=(0.05, 0.1, 0.2), paper=(0.025, 0.05, 0.1, 0.2))
    c.pgd_steps = p(mini=3, cpu=30, paper=100)
    c.hotflip_budgets = p(mini=(1,), cpu=(1, 2, 4), paper=(1, 2, 4, 8))
    c.hotflip_candidates = p(mini=4, cpu=16, paper=64)
    c.gcg_steps = p(mini=2, cpu=8, paper=50)
    c.gcg_top_k = p(mini=4, cpu=16, paper=64)
    c.gcg_search_width = p(mini=8, cpu=64, paper=256)
    c.analysis_examples = p(mini=2, cpu=8, paper=64)
    c.max_iters = p(mini=10, cpu=40, paper=60)
    return c
