"""Paper result (a): the ASR table, ViT vs DiffViT, under PGD-ℓ∞, CW-ℓ2 and AutoAttack.

Budgets are on the [0, 1] pixel scale (``eps``) or in ℓ2 (``l2_budgets``). ``autoattack`` holds
``AutoAttackConfig`` fields other than ε: empty is the standard version.
"""

import ml_collections

from diffjax.experiments.configs import recipes

EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = recipes.experiment("asr_table", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c.datasets = p(mini=("synthetic",), cpu=("cifar10",),
                   paper=("cifar10", "cifar100", "tiny_imagenet"))  # fmt: skip
    c.attack_examples = p(mini=8, cpu=300, paper=1000)
    c.eps = p(mini=(1 / 255, 8 / 255), cpu=EPS, paper=EPS)
    c.pgd_steps = p(mini=2, cpu=20, paper=50)
    c.cw_examples = p(mini=4, cpu=50, paper=1000)
    c.cw = p(
        mini=dict(binary_search_steps=2, max_iterations=5, initial_const=1.0),
        cpu=dict(binary_search_steps=4, max_iterations=50, initial_const=0.1, learning_rate=0.02),
        paper=dict(binary_search_steps=9, max_iterations=1000, initial_const=1e-3),
    )
    c.l2_budgets = p(mini=(0.1, 1.0), cpu=(0.05, 0.1, 0.2, 0.5), paper=(0.05, 0.1, 0.2, 0.5))
    c.autoattack_examples = p(mini=4, cpu=50, paper=1000)
    c.autoattack_eps = p(mini=(8 / 255,), cpu=(1 / 255, 4 / 255), paper=(1 / 255, 4 / 255))
    # cpu: all four stages with fewer iterations, targets and queries (experiments/README.md).
    c.autoattack = p(
        mini=dict(steps=2, num_targets=3, square_queries=4),
        cpu=dict(steps=25, num_targets=3, square_queries=300),
        paper=dict(),
    )
    return c
