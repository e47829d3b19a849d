"""Exact sensitivity analysis of a saved model (``diffjax analyse``).

    diffjax analyse --config=analyse --config.checkpoint=runs/diffvit \\
        --config.base_checkpoint=runs/vit --config.dataset=cifar10 --workdir runs/diffvit/analysis

Per example: branch alignment, the paper's theorems, exact and empirical local Lipschitz
constants and depth/noise cancellation (docs/analysis.md). ``base_checkpoint`` (optional) is the
standard-attention model of the same shape, for γ and Theorems 2-3; ``row`` is ``all``, ``cls``
or a token index; ``head`` None means all heads; ``tol`` None means the method's default; ``skip``
is a comma-separated subset of alignment, lipschitz, empirical, depth; ``certify`` (off when
empty) certifies a radius per example by bisection, ``certify_steps`` halvings of [0,
``certify_hi``] in the ``certify_norm`` ball (``linf`` or ``l2``), with ``interval`` (the
interval/gradient certificate) or the verifier's ``ibp``, ``crown-ibp``, ``crown``,
``alpha-crown``, and the summary gets the certified-accuracy curve; ``prompt`` is the
zero-shot prompt of a CLIP checkpoint (its image tower is analysed through it) and
``class_names`` a file of the names put into it; ``text`` and ``text_tokens`` give a language
model's examples (the lines of a text file, cut to that many tokens). Writes
``WORKDIR/settings.json``, ``WORKDIR/examples/NNNNNN.json`` (an interrupted run resumes) and
``WORKDIR/summary.json``.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"analyse takes no arg (its size is set by the fields), got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experiment = "analyse"
    c.checkpoint = ""
    c.base_checkpoint = ""
    c.dataset = "cifar10"
    c.split = "test"
    c.num_examples = 32
    c.start = 0
    c.batch_size = 8
    c.wrt = "image"
    c.head = ml_collections.config_dict.placeholder(int)
    c.row = "all"
    c.precision = "float64"
    c.lipschitz_method = "auto"
    c.max_iters = 100
    c.tol = ml_collections.config_dict.placeholder(float)
    c.radius = 1e-3
    c.samples = 64
    c.pgd_steps = 20
    c.skip = ""
    c.chunk = 64
    c.seed = 0
    c.certify = ""
    c.certify_norm = "linf"
    c.certify_hi = 0.02
    c.certify_steps = 10
    # A converted CLIP checkpoint (ignored for a ViT): the zero-shot prompt of each class, and
    # a text file of class names, one per line in label order (default: the dataset's).
    c.prompt = "a photo of a {}."
    c.class_names = ""
    # A language-model directory (diffjax import-lm; dataset and split unused): a text file,
    # one example a non-empty line, each cut to its first text_tokens tokens.
    c.text = ""
    c.text_tokens = 16
    return c
