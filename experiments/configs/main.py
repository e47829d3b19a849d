"""The main job: ViT and DiffViT trained on the embedded CIFAR-10 sample, attacked, analysed.

    diffjax run main                       # the embedded default (a few minutes on 2 CPU cores)
    diffjax run main --config=main:mini   # the test size (minutes: mostly compilation)
    diffjax run main --config=main:gpu --config.seed=1   # one H100/H200 (docs/accelerators.md)
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "embedded") -> ml_collections.ConfigDict:
    if arg not in ("embedded", "mini", "gpu"):
        raise ValueError(f"main takes 'embedded' (default), 'mini' or 'gpu', got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "main"
    c.preset = arg
    c.train = recipes.training("gpu" if arg == "gpu" else "embedded")
    c.seed = 0
    c.attack_examples = 200
    c.analysis_examples = 16
    c.pgd_steps = 20
    c.eps = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    if arg == "gpu":  # the paper shape on full CIFAR-10: 1,000 attacked, 64 analysed images
        c.attack_examples = 1000
        c.analysis_examples = 64
    if arg == "mini":
        c.train.epochs = 1
        c.train.warmup_epochs = 0.5
        c.train.train_examples = 256
        c.train.test_examples = 100
        c.attack_examples = 8
        c.analysis_examples = 4
        c.pgd_steps = 2
    return c
