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
(``pgd_steps`` steps, ``pgd_restarts`` starts) at every ε of ``eps_linf`` and ``eps_l2`` (each
ascending); AutoAttack (``autoattack``: its config fields) at ``eps_linf`` on the first
``autoattack_examples`` images (0: none); certified accuracy at every ε by
:func:`diffjax.verify.margin_lower_bounds` (float64), the methods of ``verify_methods`` run
cheapest first, each on the images the ones before left uncertified and up to the depth its
``verify_max_depth`` entry gives. On every model of the first seed:
``analysis_examples`` images of alignment and σmax (:func:`diffjax.analysis.layer_summary`).
Randomized smoothing (the ℓ2 baseline) of the natural models of the first seed at every σ of
``sigmas`` on the first ``smoothing_examples`` images, its certified accuracy at ``eps_l2``.

Cost of ``cpu`` on the 2-core CPU: the wall time of a run from scratch is saved with its
results (``results/certified/cpu/time.json``, quoted in docs/certified.md). Two things are left
out of it for time, each a line of a copy of this file passed as ``--config``:

* depth 4 (``depths=(1, 2, 4)``, ``verify_max_depth`` ≥ 4): an IBP training step of the cpu
  shape took 1.89 CPU-s at depth 4 (loaded machine; its first compile 9 min wall) against 0.41
  at depth 1 and 0.75 at depth 2 (idle), so its 12 models would more than double the run;
* CROWN (``"crown"`` in ``verify_methods``): 1.9 s wall per image and ε at depth 1 (idle
  machine; a depth-1 model's measures then take minutes instead of seconds), 59 CPU-s at
  depth 4. IBP and CROWN-IBP certify the certifiably trained models; CROWN is what certifies
  naturally and PGD-trained ones.
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
    c.depths = p(mini=(1,), cpu=(1, 2))
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
    # The verifier's methods, cheapest first, each on the images the ones before left
    # uncertified, each up to its depth in verify_max_depth (cost: the module docstring).
    c.verify_methods = ("ibp", "crown-ibp")
    c.verify_max_depth = p(mini=(1, 1), cpu=(2, 2))
    c.analysis_examples = p(mini=2, cpu=16)
    c.sigmas = p(mini=(0.25,), cpu=(0.12, 0.25, 0.5))
    c.smoothing_examples = p(mini=3, cpu=50)
    c.smoothing_n0 = p(mini=16, cpu=64)
    c.smoothing_n = p(mini=64, cpu=500)
    c.smoothing_alpha = 0.001
    c.smoothing_batch = p(mini=32, cpu=500)
    return c
