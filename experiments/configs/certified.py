"""Certified robustness of ViT, DiffViT and the Lipschitz-regularised DiffViT (docs/certified.md).

The models are depth 1 (the interval certificate compounds through blocks and is vacuous
beyond one block except at tiny radii) and small (17 tokens of width 32 at ``cpu``), so the
float64 interval programs run over the whole image in seconds. ``penalty`` is the
``lipschitz_penalty`` weight β of the regularised DiffViT; ``radii_l2`` / ``radii_linf`` the
candidate balls of the interval/gradient certificate (pixel units, images in [0, 1]);
``report_l2`` / ``report_linf`` the radii the summary tabulates; ``sigmas`` the randomized
smoothing noise levels; ``noise_training``: smooth models trained with Gaussian noise of the
same σ (``noise_sigma``) instead of the clean models. ``verify_method`` certifies a radius per
image by bisection (``verify_steps`` halvings of [0, ``verify_hi_l2``] / [0, ``verify_hi_linf``]):
``interval`` (the interval/gradient certificate) or the bound-propagation verifier's ``ibp``,
``crown-ibp``, ``crown``, ``alpha-crown``; its certified-accuracy curve has ``curve_points`` ε.
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    if arg not in ("mini", "cpu"):
        raise ValueError(f"certified takes 'mini' or 'cpu', got {arg!r}")
    c = recipes.experiment("certified", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    del c.seeds  # one seed: the certificates, not the seed spread, are the cost
    c.seed = 0
    m = c.train.model
    m.depth = 1
    if arg == "cpu":  # 32×32 images, patch 8: 16 patches + CLS, width 32, 4 heads
        m.patch_size, m.width, m.num_heads = 8, 32, 4
        c.train.epochs = 10
        c.train.learning_rate = 3e-3
    c.penalty = p(mini=0.5, cpu=0.3)
    c.penalty_iters = 3
    c.penalty_examples = p(mini=4, cpu=16)
    c.eval_examples = p(mini=64, cpu=1000)
    c.attack_examples = p(mini=8, cpu=200)
    c.pgd_steps = p(mini=2, cpu=20)
    c.eps = p(mini=(1 / 255,), cpu=(1 / 255, 2 / 255, 4 / 255))
    c.analysis_examples = p(mini=4, cpu=32)
    c.certify_examples = p(mini=3, cpu=25)
    # Decades: DA's interval bound is loose (docs/certified.md), so its radii are far smaller.
    c.radii_l2 = p(mini=(1e-6, 1e-3), cpu=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1))
    c.radii_linf = p(mini=(1e-8, 1e-5), cpu=(1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3))
    c.report_l2 = p(mini=(1e-6, 1e-3), cpu=(1e-5, 1e-4))
    c.report_linf = p(mini=(1e-8, 1e-5), cpu=(1e-6, 1e-5))
    c.verify_method = p(mini="ibp", cpu="crown")
    c.verify_hi_l2 = p(mini=0.5, cpu=0.5)
    c.verify_hi_linf = p(mini=0.05, cpu=0.02)
    c.verify_steps = p(mini=4, cpu=10)
    c.curve_points = p(mini=5, cpu=20)
    c.sigmas = p(mini=(0.25,), cpu=(0.12, 0.25, 0.5))
    c.noise_training = p(mini=False, cpu=True)
    c.smoothing_examples = p(mini=3, cpu=100)
    c.smoothing_n0 = p(mini=16, cpu=64)
    c.smoothing_n = p(mini=64, cpu=500)
    c.smoothing_alpha = 0.001
    c.smoothing_batch = p(mini=32, cpu=500)
    c.smoothing_radii = (0.0, 0.1, 0.25, 0.5)
    return c
