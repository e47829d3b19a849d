"""CLIP vs DiffCLIP: zero-shot accuracy and the paper's cosine-similarity PGD attack.

``clip`` / ``diffclip`` name ``diffjax.clip.clip_preset`` shapes; ``train_examples`` −1 trains
on all training images and 0 trains nothing (``paper``: released weights converted with
``diffjax convert-clip``, given as ``clip_checkpoint`` / ``diffclip_checkpoint``);
``training`` holds ``ContrastiveConfig`` fields; ``templates`` is ``cifar`` or ``imagenet``;
``class_names`` a text file with one class name per line (ImageNet); ``models`` the
comma-separated subset of clip, diffclip to evaluate (e.g. ``clip`` alone with an OpenAI /
open_clip checkpoint converted by ``diffjax convert-clip``).
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    if arg not in recipes.PAPER_PRESETS:
        raise ValueError(f"clip_compare takes one of {recipes.PAPER_PRESETS}, got {arg!r}")
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    c = ml_collections.ConfigDict()
    c.experiment = "clip_compare"
    c.preset = arg
    c.clip = p(mini="tiny", cpu="cifar", paper="clip_b16")
    c.diffclip = p(mini="tiny_diff", cpu="cifar_diff", paper="diffclip_b16")
    c.models = "clip,diffclip"
    c.clip_checkpoint = ""
    c.diffclip_checkpoint = ""
    c.dataset = p(mini="synthetic", cpu="cifar10", paper="tfds:imagenet2012")
    c.test_split = "test"
    c.class_names = ""
    c.train_examples = p(mini=64, cpu=-1, paper=0)
    # cpu: the exact test images 0..999 of the offline CIFAR-10 copy.
    c.eval_examples = p(mini=32, cpu=1000, paper=10000)
    c.attack_examples = p(mini=8, cpu=300, paper=1000)
    c.eps = p(mini=(4 / 255,), cpu=(1 / 255, 2 / 255, 4 / 255), paper=(1 / 255, 4 / 255))
    c.pgd_steps = p(mini=2, cpu=10, paper=20)
    c.training = p(
        mini=dict(steps=6, batch_size=16, warmup_steps=2, steps_per_call=3),
        cpu=dict(steps=300, batch_size=64, warmup_steps=30, steps_per_call=50),
        paper=dict(),
    )
    c.templates = p(mini="cifar", cpu="cifar", paper="imagenet")
    c.analysis_examples = p(mini=2, cpu=16, paper=32)
    c.seeds = (0,)
    c.batch_size = p(mini=8, cpu=100, paper=50)
    return c
