"""The attack registry: every command-line attack name, validated config building."""

import dataclasses

import pytest

from diffjax import attacks
from diffjax.experiments import attack as attack_cli
from diffjax.experiments import configs


def test_registry_covers_the_command_line_names():
    assert {"pgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw", "square", "fab-t", "autoattack",
            "autoattack-rand"} <= set(attacks.ATTACKS)  # fmt: skip
    for name, spec in attacks.ATTACKS.items():
        assert dataclasses.is_dataclass(spec.config_cls), name
        assert set(spec.fixed) <= {f.name for f in dataclasses.fields(spec.config_cls)}


@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_the_command_line_config_of_every_attack_is_its_registry_config(name):
    """`diffjax attack --config=attack:NAME` holds every settable field at the dataclass
    default, and an override reaches the built config and nothing else."""
    spec = attacks.ATTACKS[name]
    config = configs.load(f"attack:{name}")
    assert set(config.params) == set(spec.fields)
    fn, built = attack_cli.build_attack(config)
    assert fn is spec.fn
    assert built == spec.config_cls(**spec.fixed, **{f: 4 / 255 for f in spec.required})
    field = next(f for f in ("steps", "queries", "max_iterations") if f in spec.fields)
    changed = configs.load(f"attack:{name}", [f"--config.params.{field}=7"])
    assert attack_cli.build_attack(changed)[1] == dataclasses.replace(built, **{field: 7})


def test_fixed_fields_come_from_the_name():
    fn, config = attacks.build_attack("apgd-t", eps=8 / 255)
    assert fn is attacks.apgd and config.loss == "dlr-targeted"
    _, rand = attacks.build_attack("autoattack-rand", eps=8 / 255)
    assert rand.version == "rand" and rand.sequence == ("apgd-ce", "apgd-dlr")
    _, pgd = attacks.build_attack("pgd", eps=0.5, norm="l2", steps=None)  # None: default
    assert pgd == attacks.PGDConfig(0.5, "l2")


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("pgdd", {"eps": 0.1}, "unknown attack 'pgdd'"),
        ("pgd", {"eps": 0.1, "stepz": 3}, r"no fields \['stepz'\]"),
        ("apgd-t", {"eps": 0.1, "loss": "ce"}, r"fixes the fields \['loss'\]"),
        ("apgd-ce", {"eps": 0.1, "targeted": True}, r"no fields \['targeted'\]"),
        ("pgd", {"steps": 3}, r"\['eps'\] required"),
        ("pgd", {"eps": -1.0}, "eps must be a finite number >= 0"),
        ("square", {"eps": 0.1, "norm": "l1"}, "norm must be one of"),
    ],
)
def test_build_attack_names_the_bad_field(name, fields, message):
    with pytest.raises(ValueError, match=message):
        attacks.build_attack(name, **fields)
