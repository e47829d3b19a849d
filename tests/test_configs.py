"""Experiment configs: every file loads and converts to the validated dataclasses, overrides are
typed and checked, the recipes are the one source of every zoo model, and zoo names follow the
resolved config."""

import dataclasses
import hashlib
import json

import pytest

import diffjax as dj
from diffjax.experiments import configs, zoo
from diffjax.experiments.configs import recipes
from diffjax.train import TrainConfig

ARGS = {"main": ("embedded", "mini", "gpu"), "attack": ("pgd", "cw", "autoattack"),
        "analyse": ("",), "certified": ("mini", "cpu"),
        "train": tuple(recipes.RECIPES)}  # fmt: skip


@pytest.mark.parametrize("name", configs.names())
def test_every_config_loads_at_every_arg_and_names_its_experiment(name):
    for arg in ARGS.get(name, recipes.PAPER_PRESETS):
        config = configs.load(f"{name}:{arg}" if arg else name)
        assert config.experiment == name
        if "train" in config:
            # The boundary check: the recipe converts to the frozen, validated dataclass.
            assert isinstance(recipes.train_config(config.train), TrainConfig)
    with pytest.raises(configs.ConfigError, match="choose from|takes|unknown"):
        configs.load(f"{name}:no_such_arg")


def test_paper_experiments_train_exactly_their_presets_recipe():
    for name in ("asr_table", "alignment", "lipschitz", "depth", "lambda_sweep",
                 "lambda_training"):  # fmt: skip
        for preset in recipes.PAPER_PRESETS:
            config = configs.load(f"{name}:{preset}")
            assert config.train.to_dict() == recipes.training(preset).to_dict(), (name, preset)


def test_a_recipe_sets_its_fields_and_leaves_the_rest_to_the_dataclass_defaults():
    for name, recipe in recipes.RECIPES.items():
        config = recipes.train_config(recipes.training(name))
        variant, model_changes = recipe["model"]
        assert config.model == dj.variant(variant, **model_changes)
        set_here = {k: v for k, v in recipe.items() if k != "model"}
        assert {k: getattr(config, k) for k in set_here} == set_here
        defaults = TrainConfig()
        for f in dataclasses.fields(TrainConfig):
            if f.name not in set_here and f.name != "model":
                assert getattr(config, f.name) == getattr(defaults, f.name), (name, f.name)


def test_the_paper_model_is_the_s4_variant():
    assert dj.variant("S/4") == dj.ViTConfig(width=192, depth=6, num_heads=6, mlp_ratio=2.0,
                                             patch_size=4) == dj.preset("cifar")  # fmt: skip
    for bad, message in (("S4", "SIZE/PATCH"), ("Huge/4", "unknown model size"),
                         ("S/x", "SIZE/PATCH")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            dj.variant(bad)


def test_overrides_are_typed_checked_and_may_clear_a_field():
    c = configs.load("asr_table:cpu", ["--config.seeds=0,1", "--config.pgd_steps=50",
                                       "--config.train.model.attention=diff",
                                       "--config.train.grad_clip=None"])  # fmt: skip
    assert c.seeds == (0, 1) and c.pgd_steps == 50 and c.train.grad_clip is None
    assert recipes.train_config(c.train).grad_clip is None
    cases = [("--config.pgd_step=3", "did you mean 'pgd_steps'"),
             ("--config.pgd_steps=many", "pgd_steps"),
             ("--config.train.model.width=1.5", "width"),
             ("pgd_steps=3", "not a config override")]  # fmt: skip
    for override, message in cases:
        with pytest.raises(configs.ConfigError, match=message):
            configs.load("asr_table:cpu", [override])
    often = configs.load("train:mini", ["--config.train.model.lambda_init=often"])
    with pytest.raises(ValueError, match="lambda_init"):
        recipes.train_config(often.train)


def test_config_files_by_path_and_clear_errors(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "import ml_collections\n\ndef get_config(arg='x'):\n"
        "    return ml_collections.ConfigDict({'experiment': 'mine', 'arg': arg})\n"
    )
    assert configs.load(f"{path}:y").arg == "y"
    with pytest.raises(configs.ConfigError, match="does not exist"):
        configs.load(str(tmp_path / "missing.py"))
    with pytest.raises(configs.ConfigError, match="no config named"):
        configs.load("nope")


def test_zoo_runs_are_named_by_the_sha256_of_the_resolved_config(tmp_path):
    from diffjax.data import synthetic
    from diffjax.experiments.common import Context

    z = zoo.Zoo(recipes.train_config(recipes.training("mini")), Context(workdir=tmp_path))
    data = synthetic(4)
    config = z.config(data, "diff", seed=3, depth=1)
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    assert z.run_dir(config) == tmp_path / "runs/zoo/synthetic" / f"diffvit_d1_s3-{digest}"
    other = z.config(data, "diff", seed=3, depth=1, lambda_init=0.5)
    assert z.run_dir(other).name.startswith("diffvit_d1_li0.5_s3-")
    assert zoo.config_hash(other) != digest
    assert zoo.config_hash(config.replace(epochs=3)) != digest
    # Where the data lives changes no number: not part of the name (existing runs stay valid).
    for resident in (True, False):
        assert zoo.config_hash(config.replace(resident_data=resident)) == digest


def test_unknown_fields_are_matched_by_their_nested_names():
    with pytest.raises(configs.ConfigError, match=r"did you mean 'params\.eps'\?"):
        configs.load("attack:pgd", ["--config.eps=0.01"])
    with pytest.raises(configs.ConfigError, match=r"did you mean 'train\.model\.depth'"):
        configs.load("train:mini", ["--config.train.depht=2"])


@pytest.mark.parametrize("spec,override,field", [
    ("attack:pgd", "--config.params.eps=8", "params.eps"),
    ("main:mini", "--config.eps=(8,)", "eps"),
    ("asr_table:mini", "--config.autoattack_eps=(0.03,4)", "autoattack_eps"),
])  # fmt: skip
def test_linf_budgets_on_the_255_scale_are_refused(spec, override, field):
    budget = override.rpartition("=")[2].strip("(,)").split(",")[-1]
    with pytest.raises(configs.ConfigError,
                       match=rf"--config\.{field}: .* did you mean {budget}/255"):  # fmt: skip
        configs.load(spec, [override])
    # An ℓ2 radius is not on the ℓ∞ scale: 8 is a valid ℓ2 budget for a 32×32×3 image.
    assert configs.load("attack:pgd", ["--config.params.norm=l2",
                                       "--config.params.eps=8"]).params.eps == 8  # fmt: skip
