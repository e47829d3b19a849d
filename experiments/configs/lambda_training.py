"""Paper result (f), the paper's first open question: λ during training, with σmax and ASR at
every saved checkpoint of the zoo's runs."""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = recipes.experiment("lambda_training", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c.analysis_examples = p(mini=2, cpu=16, paper=64)
    c.attack_examples = p(mini=8, cpu=200, paper=1000)
    c.eps = 1 / 255
    c.pgd_steps = p(mini=2, cpu=20, paper=50)
    return c
