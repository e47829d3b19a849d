"""Attack a saved model on a dataset split (``diffjax attack``); the arg names the attack.

    diffjax attack --config=attack:pgd --config.checkpoint=runs/vit --config.params.eps=0.0157 \\
        --config.params.steps=50 --workdir results/vit_pgd

The arg is a name of ``diffjax.attacks.ATTACKS`` (pgd, apgd-ce, apgd-dlr, apgd-t, cw, square,
fab-t, autoattack, autoattack-rand); ``params`` holds every field of that attack's config
dataclass at its default (``eps`` 4/255 on the [0, 1] pixel scale where the attack has one), so
``diffjax attack --config=attack:NAME --help`` lists them all. ``targeted`` (pgd, cw) draws a
random target ≠ label per example from (seed, index). ``num_examples`` None means the whole
split. Results go to ``WORKDIR/attack.json``, rewritten atomically after every batch
(``--resume`` continues it).
"""

import ml_collections

from diffjax import attack_config
from diffjax.experiments import configs

DEFAULT_EPS = 4 / 255


def get_config(arg: str = "pgd") -> ml_collections.ConfigDict:
    if arg not in attack_config.ATTACKS:
        raise ValueError(f"unknown attack {arg!r}; choose from {sorted(attack_config.ATTACKS)}")
    spec = attack_config.ATTACKS[arg]
    default = attack_config.attack_config(arg, **{f: DEFAULT_EPS for f in spec.required})
    params = configs.as_config_dict(default)
    for name in spec.fixed:  # set by the attack's name
        del params[name]
    c = ml_collections.ConfigDict()
    c.experiment = "attack"
    c.attack = arg
    c.checkpoint = ""
    c.dataset = "cifar10"
    c.split = "test"
    c.num_examples = ml_collections.config_dict.placeholder(int)
    c.batch_size = 100
    c.seed = 0
    c.params = params
    return c
