"""Paper result (b): the λ_init sweep; clean accuracy and PGD ASR of DiffViT against λ_init.

Single-layer models (``depth``) with a constant λ_init (``lambdas``) in every layer, plus the
ViT of the same shape; ``eps[0]`` is the budget compared with the paper's table.
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = recipes.experiment("lambda_sweep", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c.depth = 1
    sweep = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95)
    c.lambdas = p(mini=(0.5, 0.8), cpu=sweep, paper=sweep)
    c.attack_examples = p(mini=8, cpu=300, paper=1000)
    c.eps = p(mini=(1 / 255,), cpu=(1 / 255, 4 / 255), paper=(1 / 255, 4 / 255))
    c.pgd_steps = p(mini=2, cpu=20, paper=50)
    return c
