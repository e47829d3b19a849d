"""Paper result (e): the depth crossover; ASR and CW ℓ2 against depth, measured ᾱ and bound."""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = recipes.experiment("depth", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c.depths = p(mini=(1, 2), cpu=(1, 2, 4, 8, 12), paper=(1, 2, 4, 8, 12))
    c.seeds = p(mini=(0,), cpu=(0,), paper=(0, 1, 2))
    c.attack_examples = p(mini=8, cpu=300, paper=1000)
    c.eps = (1 / 255, 4 / 255)
    c.pgd_steps = p(mini=2, cpu=20, paper=50)
    c.cw_examples = p(mini=4, cpu=50, paper=500)
    c.cw = p(
        mini=dict(binary_search_steps=2, max_iterations=5, initial_const=1.0),
        cpu=dict(binary_search_steps=4, max_iterations=50, initial_const=0.1, learning_rate=0.02),
        paper=dict(binary_search_steps=9, max_iterations=1000),
    )
    c.profile_examples = p(mini=2, cpu=8, paper=64)
    c.radius = 1e-3
    c.max_iters = p(mini=10, cpu=60, paper=60)
    return c
