"""Paper result (d): exact (Lanczos σmax) and empirical local Lipschitz constants per layer.

``radius`` is ‖ξ‖ of the empirical estimates (units of u = LN1(h_l)); ``samples`` random ξ;
``pgd_steps`` ascent steps; ``max_iters`` Lanczos iterations.
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = recipes.experiment("lipschitz", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c.examples = p(mini=4, cpu=32, paper=500)
    c.radius = 1e-3
    c.samples = p(mini=4, cpu=64, paper=1000)
    c.pgd_steps = p(mini=3, cpu=20, paper=50)
    c.max_iters = p(mini=20, cpu=60, paper=60)
    c.batch_size = p(mini=4, cpu=8, paper=50)
    return c
