"""Paper result (c): gradient alignment of the two attention branches, per layer.

``row`` is the query row differentiated (0 = CLS; −1 = all rows); ``wrt`` is ``image``,
``block_input`` or ``attention_input``.
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = recipes.experiment("alignment", arg)
    c.examples = recipes.by_preset(arg, mini=4, cpu=64, paper=1000)
    c.row = 0
    c.wrt = "image"
    c.batch_size = recipes.by_preset(arg, mini=4, cpu=8, paper=50)
    return c
