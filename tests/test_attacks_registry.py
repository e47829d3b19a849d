"""The attack registry: every command-line attack name, validated config building."""

import dataclasses

import pytest

from diffjax import attacks
from experiments import attack as attack_cli


def test_registry_covers_the_command_line_names():
    assert set(attack_cli.ATTACKS) <= set(attacks.ATTACKS)
    assert "autoattack-rand" in attacks.ATTACKS
    for name, spec in attacks.ATTACKS.items():
        assert dataclasses.is_dataclass(spec.config_cls), name
        assert set(spec.fixed) <= {f.name for f in dataclasses.fields(spec.config_cls)}


def _fields(args, name):
    """The registry fields that the current command line's flags mean for one attack."""
    common = {"eps": args.eps, "norm": args.norm}
    if name == "cw":
        return dict(confidence=args.confidence, binary_search_steps=args.binary_search_steps,
                    max_iterations=args.max_iterations, learning_rate=args.learning_rate,
                    initial_const=args.initial_const, abort_early=not args.no_abort_early,
                    targeted=args.targeted)  # fmt: skip
    if name == "pgd":
        return dict(common, steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                    loss=args.loss, targeted=args.targeted)  # fmt: skip
    steps = args.steps if args.steps is not None else 100
    if name.startswith("apgd"):
        return dict(common, steps=steps, restarts=args.restarts, num_targets=args.num_targets)
    if name == "square":
        return dict(eps=args.eps, queries=args.queries)
    if name == "fab-t":
        return dict(common, steps=steps, restarts=args.restarts, num_targets=args.num_targets)
    return dict(common, steps=steps, num_targets=args.num_targets, square_queries=args.queries)


@pytest.mark.parametrize("name", attack_cli.ATTACKS)
@pytest.mark.parametrize("extra", [[], ["--steps", "7", "--num-targets", "3", "--restarts", "2"]])
def test_build_attack_matches_the_command_line(name, extra):
    argv = ["--checkpoint", "c", "--output", "o", "--attack", name, "--eps", "4/255", *extra]
    if name == "cw" or (name in ("square", "autoattack") and "--restarts" in extra):
        argv = argv[:8]  # restarts and steps do not apply
    args = attack_cli.build_parser().parse_args(argv)
    want_fn, want = attack_cli.build_attack(args)
    fn, config = attacks.build_attack(name, **_fields(args, name))
    assert fn is want_fn
    # Fields the registry adds (e.g. Square's norm, AutoAttack's version) keep their defaults.
    assert config == want, (config, want)


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
