"""Every training recipe the experiments use, defined once and named by its preset.

    train = recipes.training("cpu")               # ConfigDict mirroring diffjax.config.TrainConfig
    config = recipes.train_config(train)          # the validated frozen dataclass

A recipe is a model variant (``diffjax.config.variant``: ``"SIZE/PATCH"``) and a training
schedule; the ConfigDict holds every :class:`~diffjax.config.TrainConfig` field (its ``model``
every :class:`~diffjax.config.ViTConfig` field), so any of them can be overridden from the
command line (``--config.train.epochs=8``, ``--config.train.model.width=96``). Fields the
recipe does not set keep the dataclasses' defaults.

| preset     | model              | data                          | epochs | wall (2-core CPU)  |
|------------|--------------------|-------------------------------|--------|--------------------|
| `mini`    | Pico/16, depth 2   | 128 synthetic images          | 2      | compile-bound      |
| `embedded` | Nano/4, depth 3    | the 5,000 embedded images     | 12     | ~1 min per model   |
| `cpu`      | Nano/4, depth 4    | 10,000 CIFAR-10 images        | 4      | ~2 min per model   |
| `paper`    | S/4 (dropout 0.1)  | all 50,000 CIFAR-10 images    | 200    | GPU                |
| `gpu`      | S/4, bf16, fused   | all 50,000 CIFAR-10 images    | 50     | ~1 min/model, GPU  |

(`gpu`: one H100/H200, sized in docs/accelerators.md.)
"""

from __future__ import annotations

import ml_collections

from diffjax.attack_config import attack_config
from diffjax.config import TrainConfig, ViTConfig, variant
from diffjax.experiments import configs
from diffjax.lm_config import LMConfig, LMTrainConfig, RetrievalTask

RECIPES: dict[str, dict] = {
    "mini": dict(
        model=("Pico/16", {}),
        dataset="synthetic",
        epochs=2,
        batch_size=32,
        learning_rate=3e-3,
        warmup_epochs=0.5,
        train_examples=128,
        test_examples=64,
        eval_batch_size=64,
        log_every_steps=4,
    ),
    # The main job: the embedded sample trains both models in a few minutes.
    "embedded": dict(
        model=("Nano/4", {"depth": 3}),
        dataset="embedded",
        epochs=12,
        batch_size=64,
        learning_rate=2e-3,
        warmup_epochs=1.0,
        eval_every_epochs=4,
        log_every_steps=20,
    ),
    # Sized from measured train-step throughput on the 2-core CPU (docs/performance.md).
    "cpu": dict(
        model=("Nano/4", {}),
        dataset="cifar10",
        epochs=4,
        batch_size=128,
        learning_rate=2e-3,
        warmup_epochs=0.5,
        train_examples=10000,
        # The offline CIFAR-10 copy is exact for test images 0..999.
        test_examples=1000,
        log_every_steps=20,
    ),
    # The paper-scale recipe (a GPU): evaluated, and checkpointed, every 5th epoch.
    "paper": dict(
        model=("S/4", {"dropout": 0.1}),
        dataset="cifar10",
        epochs=200,
        batch_size=256,
        learning_rate=1e-3,
        warmup_epochs=10.0,
        eval_batch_size=1000,
        eval_every_epochs=5,
        log_every_steps=100,
    ),
    # One H100/H200: ViT and DiffViT at the paper shape, 2 seeds, PGD, alignment and σmax well
    # inside 10 minutes (the FLOP and MFU arithmetic: docs/accelerators.md). bf16 compute with
    # float32 master weights, fused attention, the blocks scanned, the training set resident on
    # the GPU (154 MB; batches gathered in the step); no dropout, which a 50-epoch schedule does
    # not need to reach 80 % clean accuracy.
    "gpu": dict(
        model=("S/4", {"dtype": "bfloat16", "attention_impl": "fused", "scan_layers": True}),
        dataset="cifar10",
        epochs=50,
        batch_size=512,
        learning_rate=2e-3,
        warmup_epochs=5.0,
        eval_batch_size=1000,
        eval_every_epochs=10,
        log_every_steps=200,
        resident_data=True,
    ),
}


def training(preset: str, **changes) -> ml_collections.ConfigDict:
    """The training recipe ``preset`` (``mini``, ``embedded``, ``cpu``, ``paper``, ``gpu``).

    Args:
      preset: the recipe's name.
      **changes: :class:`TrainConfig` field overrides (``model`` excluded).

    Returns:
      a ConfigDict with every TrainConfig field; ``model`` holds every ViTConfig field.
    """
    if preset not in RECIPES:
        raise ValueError(f"unknown training recipe {preset!r}; choose from {sorted(RECIPES)}")
    recipe = dict(RECIPES[preset])
    name, model_changes = recipe.pop("model")
    config = TrainConfig(model=variant(name, **model_changes), **{**recipe, **changes})
    return configs.as_config_dict(config)


def model_config(cd: ml_collections.ConfigDict) -> ViTConfig:
    """The validated :class:`ViTConfig` of a ``train.model`` ConfigDict."""
    d = cd.to_dict()
    li = d["lambda_init"]
    try:
        d["lambda_init"] = li if li == "schedule" else float(li)
    except ValueError as e:
        raise ValueError(f"lambda_init must be 'schedule' or a number, got {li!r}") from e
    for name in ("diff_layers", "mean", "std"):
        if d[name] is not None:
            d[name] = tuple(d[name])
    return ViTConfig(**d)


def train_config(cd: ml_collections.ConfigDict) -> TrainConfig:
    """The validated :class:`TrainConfig` of a ``train`` ConfigDict (the boundary check)."""
    d = cd.to_dict()
    return TrainConfig(**{**d, "model": model_config(cd.model)})


PAPER_PRESETS = ("mini", "cpu", "paper", "gpu")


def experiment(name: str, preset: str) -> ml_collections.ConfigDict:
    """The fields every paper experiment shares: its name, preset and zoo training recipe.

    ``mini`` runs on synthetic data (the tests); ``cpu``, ``paper`` and ``gpu`` on CIFAR-10.
    ``gpu`` trains 2 seeds (the 10-minute budget of docs/accelerators.md), the others 3.
    """
    if preset not in PAPER_PRESETS:
        raise ValueError(f"{name} takes one of {PAPER_PRESETS}, got {preset!r}")
    c = ml_collections.ConfigDict()
    c.experiment = name
    c.preset = preset
    c.train = training(preset)
    c.seeds = {"mini": (0,), "gpu": (0, 1)}.get(preset, (0, 1, 2))
    c.batch_size = {"mini": 8, "cpu": 100, "paper": 250, "gpu": 1000}[preset]
    return c


def by_preset(preset: str, **values):
    """``values[preset]``: one experiment setting written per preset, side by side.

    ``gpu`` takes the ``paper`` value where a setting names none of its own.
    """
    if preset == "gpu" and "gpu" not in values:
        return values["paper"]
    return values[preset]


# Language models (docs/language.md): the DA LM and its parameter-matched standard LM share one
# recipe; ``attention`` is set per model by the experiment. Steps are sized from a measured
# ~10 steps/s of the cpu shape on the loaded 2-core CPU (both models in about 6 minutes).
LM_RECIPES: dict[str, dict] = {
    "mini": dict(
        model=dict(width=16, depth=1, num_heads=2, max_len=64),
        seq_len=32, retrieval=dict(pairs=2, filler=4), steps=6, batch_size=8,
        warmup_steps=2, eval_every_steps=6, eval_windows=16, eval_retrieval=16,
        log_every_steps=3,
    ),
    "cpu": dict(
        model=dict(width=64, depth=2, num_heads=4, max_len=128),
        seq_len=64, retrieval=dict(pairs=4, filler=8), answer_weight=10.0, steps=1500,
        batch_size=32, learning_rate=3e-3, warmup_steps=50, eval_every_steps=500,
        log_every_steps=50,
    ),
    # A GPU: 8 DIFF heads (the paper's minimum) against 16 heads, a 4-layer D = 512 model.
    "paper": dict(
        model=dict(width=512, depth=4, num_heads=16, max_len=512),
        seq_len=256, retrieval=dict(pairs=8, filler=48), answer_weight=1.0, steps=20000,
        batch_size=64, learning_rate=1e-3, warmup_steps=375, eval_every_steps=2000,
        eval_windows=1024, eval_retrieval=1024, log_every_steps=200,
    ),
}


def lm_training(preset: str) -> ml_collections.ConfigDict:
    """The language-model recipe ``preset`` (``mini``, ``cpu``, ``paper``; ``gpu`` = paper)
    as a ConfigDict of every :class:`~diffjax.lm_config.LMTrainConfig` field."""
    preset = "paper" if preset == "gpu" else preset
    if preset not in LM_RECIPES:
        raise ValueError(f"unknown LM recipe {preset!r}; choose from {sorted(LM_RECIPES)}")
    r = dict(LM_RECIPES[preset])
    model, retrieval = LMConfig(**r.pop("model")), RetrievalTask(**r.pop("retrieval"))
    return configs.as_config_dict(LMTrainConfig(model=model, retrieval=retrieval, **r))


def lm_train_config(cd: ml_collections.ConfigDict):
    """The validated :class:`~diffjax.lm_config.LMTrainConfig` of an ``lm_training`` ConfigDict."""
    d = cd.to_dict()
    li = d["model"]["lambda_init"]
    if li != "schedule":
        try:
            d["model"]["lambda_init"] = float(li)
        except ValueError as e:
            raise ValueError(f"lambda_init must be 'schedule' or a number, got {li!r}") from e
    return LMTrainConfig.from_dict(d)


def check(config: ml_collections.ConfigDict) -> None:
    """Build the validated dataclass of each part of a config that has one (the recipes
    ``train`` and ``lm_train``, an attack's ``params``), so a bad value is refused when the
    config is loaded, before JAX.

    Raises:
      configs.ConfigError: naming the field and what is wrong with it.
    """
    parts = [("train", train_config), ("lm_train", lm_train_config)]
    if config.get("experiment") == "attack":
        parts.append(("params", lambda p: attack_config(config.attack, **p.to_dict())))
    for field, build in parts:
        if isinstance(config.get(field), ml_collections.ConfigDict):
            try:
                build(config[field])
            except (ValueError, TypeError) as e:
                raise configs.ConfigError(f"--config.{field}: {e}") from None
