"""Certified robustness of ViT and parameter-matched DiffViT, naturally, PGD- and certifiably
trained, at several depths (docs/certified.md, "The certified experiment").

Models: every depth of ``depths`` × {ViT, DiffViT} × ``trainings`` × ``seeds``, zoo models of
the preset's recipe with the per-layer layout (``scan_layers=False, remat=False``: the
verifier traces it). ``friendly``: every model is the verification-friendly ViT (ReLU,
BatchNorm, mean pooling) — natural, PGD and certified models are then the same architecture;
``False`` keeps the recipe's GELU/LayerNorm/CLS (certified training then is refused: its bounds
need the friendly switches). Robust training (``pgd`` and ``ibp``/``crown-ibp``): ε grows
linearly to ``train_eps`` (ℓ∞, [0, 1] pixel scale) over ``ramp_epochs`` from the first step (a
naturally warmed-up DiffViT's IBP bounds overflow), κ from 1 to ``kappa_end``;
``train_pgd_steps`` PGD steps per training example.

Measures, all on the first ``examples`` test images of each model: clean accuracy; PGD
(``pgd_steps`` steps, ``pgd_restarts`` starts) at every ε of ``eps_linf`` and ``eps_l2``;
AutoAttack (``autoattack``: its config fields) at ``eps_linf`` on the first
``autoattack_examples`` images (0: none); certified accuracy at every ε by
:func:`diffjax.verify.margin_lower_bounds` with ``verify_method`` (float64, ``verify_batch``
images per call). On the certified models of the first seed: ``analysis_examples`` images of
alignment and σmax (:func:`diffjax.analysis.layer_summary`). Randomized smoothing (the ℓ2
baseline) of the natural models of the first seed at every σ of ``sigmas`` on the first
``smoothing_examples`` images, its certified accuracy at ``eps_l2``.

Cost of ``cpu`` on the 2-core CPU (an estimate, not a run; measured 2026-12-07 on the loaded
machine, process CPU seconds, wall ≈ CPU/2): training steps of the cpu shape (batch 128, width
32, 17 tokens) at depth 4, ViT, on the embedded sample, timed between the progress records of
steps 2 and 6 (compile excluded): natural 0.06, PGD (5 steps) 0.41, IBP 1.89 CPU-s/step;
compile + first step + evaluation 29 / 41 / 136 CPU-s. With 5,000 images × 6 epochs = 234
steps, step cost ∝ depth (depths 1 + 2 + 4 = 1.75 × depth 4), DiffViT = ViT (not measured) and
compiles paid once (the compilation cache serves the second seed): training ≈ 2 seeds × 2
models × (234 × 1.75 × (0.06 + 0.41 + 1.89)) + 2 models × 3 depths × (29 + 41 + 136) ≈ 3,900
+ 1,240 ≈ 5,100 CPU-s ≈ 43 min wall. Certification dominates: CROWN (``margin_lower_bounds``,
float64, 2 images per call) of the depth-4 ViT took 95 CPU-s for the first (compiling) call and
then 59 CPU-s per image per ε (ℓ∞ 1/255, 2 images), so 100 images × 4 ε × 12 depth-4 models
alone ≈ 280,000 CPU-s (days). As configured (``verify_method="crown"``, ``examples=100``) the
cpu preset therefore does not fit one hour; not yet measured: CROWN at depths 1 and 2, IBP /
CROWN-IBP certification, PGD/AutoAttack evaluation and smoothing, from which ``examples``
and ``verify_method`` are to be sized.
"""

import ml_collections

from diffjax.experiments.configs import recipes


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    if arg not in ("mini", "cpu"):
        raise ValueError(f"certified takes 'mini' or 'cpu', got {arg!r}")
    c = recipes.experiment("certified", arg)
    p = lambda **v: recipes.by_preset(arg, **v)  # noqa: E731
    m = c.train.model
    m.scan_layers, m.remat = False, False
    if arg == "cpu":  # 32×32 images, patch 8: 16 patches + CLS, width 32, 4 heads
        m.patch_size, m.width, m.num_heads = 8, 32, 4
        c.train.epochs = 6
        c.train.train_examples = 5000
    c.seeds = p(mini=(0,), cpu=(0, 1))
    c.depths = p(mini=(1,), cpu=(1, 2, 4))
    c.trainings = ("none", "pgd", "ibp")
    c.friendly = True
    c.train_eps = 2 / 255
    c.ramp_epochs = p(mini=1.0, cpu=3.0)
    c.kappa_end = 0.5
    c.train_pgd_steps = p(mini=2, cpu=5)
    c.examples = p(mini=8, cpu=100)
    # mini: one ε per norm, since every ε is another compiled attack program
    c.eps_linf = p(mini=(2 / 255,), cpu=(1 / 255, 2 / 255))
    c.eps_l2 = p(mini=(0.25,), cpu=(0.1, 0.25))
    c.pgd_steps = p(mini=2, cpu=20)
    c.pgd_restarts = 1
    c.autoattack_examples = p(mini=0, cpu=50)
    c.autoattack = p(mini=dict(steps=2, num_targets=3, square_queries=4),
                     cpu=dict(steps=25, num_targets=3, square_queries=300))  # fmt: skip
    c.verify_method = p(mini="ibp", cpu="crown")
    c.verify_batch = p(mini=8, cpu=2)
    c.analysis_examples = p(mini=2, cpu=16)
    c.sigmas = p(mini=(0.25,), cpu=(0.12, 0.25, 0.5))
    c.smoothing_examples = p(mini=3, cpu=50)
    c.smoothing_n0 = p(mini=16, cpu=64)
    c.smoothing_n = p(mini=64, cpu=500)
    c.smoothing_alpha = 0.001
    c.smoothing_batch = p(mini=32, cpu=500)
    return c
