"""Train one ViT or DiffViT: a recipe of ``recipes.py`` (``diffjax train``).

    diffjax train --config=train:cpu --config.train.model.attention=diff --workdir runs/diffvit
    diffjax train --config=train:paper --config.train.model.dtype=bfloat16 --workdir runs/vit

``train`` holds every ``diffjax.config.TrainConfig`` field (``train.model``: every ``ViTConfig``
field); ``train_split`` / ``test_split`` pick the splits (``tfds:`` datasets take split strings
such as ``train[:10%]``); ``image_size`` resizes ``tfds:`` images (0: as stored).
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "train"
    c.preset = arg
    c.train = recipes.training(arg)
    if arg == "mini":
        c.train.checkpoint_every_steps = 4
    c.train_split = "train"
    c.test_split = "test"
    c.image_size = 0
    return c
