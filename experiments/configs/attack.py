"""Attack a saved model on a dataset split (``diffjax attack``); the arg names the attack.

    diffjax attack --config=attack:pgd --config.checkpoint=runs/vit --config.eps=0.0157 \\
        --workdir results/vit_pgd

Attacks: pgd, apgd-ce, apgd-dlr, apgd-t, cw, square, fab-t, autoattack. ``eps`` is on the [0, 1]
pixel scale (4/255 = 0.0157; ignored by cw); ``steps`` None means the attack's default (PGD 20,
APGD/FAB/AutoAttack 100); ``step_size`` None means PGD's default; ``num_examples`` None means
the whole split. Results go to
``WORKDIR/attack.json``, rewritten atomically after every batch (``--resume`` continues it).
"""

import ml_collections

ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw", "square", "fab-t", "autoattack")


def get_config(arg: str = "pgd") -> ml_collections.ConfigDict:
    if arg not in ATTACKS:
        raise ValueError(f"unknown attack {arg!r}; choose from {ATTACKS}")
    c = ml_collections.ConfigDict()
    c.experiment = "attack"
    c.attack = arg
    c.checkpoint = ""
    c.dataset = "cifar10"
    c.split = "test"
    c.num_examples = ml_collections.config_dict.placeholder(int)
    c.batch_size = 100
    c.norm = "linf"
    c.eps = 4 / 255
    c.seed = 0
    c.steps = ml_collections.config_dict.placeholder(int)
    c.step_size = ml_collections.config_dict.placeholder(float)
    c.restarts = 1
    c.loss = "ce"
    c.targeted = False
    c.num_targets = 9
    c.queries = 5000
    c.cw = ml_collections.ConfigDict(dict(
        confidence=0.0, binary_search_steps=9, max_iterations=10000, learning_rate=1e-2,
        initial_const=1e-3, abort_early=True))  # fmt: skip
    return c
