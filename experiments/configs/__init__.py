"""Experiment configs: one file per experiment, each with ``get_config(arg)``.

    config = configs.load("asr_table:cpu", ["--config.seeds=(0,)"])
    config = configs.load("experiments/configs/asr_table.py:mini")

A spec is a config file path or the name of a file in this folder, optionally followed by
``:ARG`` (the preset: ``mini``, ``cpu``, ``paper``, …). Overrides are ``--config.FIELD=VALUE``
flags parsed by ``ml_collections.config_flags`` (the big_vision convention): the value is read as
a Python literal of the field's type (``(0, 1)`` or ``0,1`` for tuples, ``true`` for booleans);
``None`` clears any field (e.g. ``--config.train.train_examples=None``: all images); an unknown
field, a value of the wrong type or a missing file is an error naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import pathlib

import ml_collections
from absl import flags
from ml_collections import config_flags

HERE = pathlib.Path(__file__).parent


class ConfigError(ValueError):
    """A config that cannot be loaded, overridden or converted; the message names the cause."""


def names() -> list[str]:
    """The configs that ship in this folder (file stems)."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("__init__", "recipes"))


def resolve(spec: str) -> str:
    """``NAME[:ARG]`` of a shipped config, or ``PATH.py[:ARG]``, as ``PATH.py[:ARG]``."""
    path, sep, arg = spec.partition(":")
    if not path.endswith(".py"):
        if path not in names():
            raise ConfigError(f"no config named {path!r}; choose from {names()} or give a .py path")
        path = str(HERE / f"{path}.py")
    elif not pathlib.Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    return path + sep + arg


def load(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """The config of ``spec`` with ``--config.FIELD=VALUE`` overrides applied, locked.

    Raises:
      ConfigError: naming the bad spec, file, field or value.
    """
    # config_flags parses a value by the field's type, so "None" cannot reach an int field:
    # those overrides are set after parsing (every field may be None: "use the default").
    nones = [a for a in overrides if a.partition("=")[2] in ("None", "none")]
    overrides = [a for a in overrides if a not in nones]
    argv = ["diffjax", f"--config={resolve(spec)}", *overrides]
    if overrides or nones:
        known = [k for k, _ in flat(load(spec))]
        for arg in [*overrides, *nones]:
            field = arg.removeprefix("--config.").partition("=")[0]
            if not arg.startswith("--config.") or "=" not in arg:
                raise ConfigError(f"not a config override: {arg!r} (want --config.FIELD=VALUE)")
            if field not in known:
                close = suggest(field, known)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ConfigError(f"unknown config field {field!r} in {spec}{hint}")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        config = fv.config
    except (flags.Error, ValueError, TypeError, KeyError) as e:
        # config_flags wraps errors of get_config in a traceback: its last line is the cause.
        raise ConfigError(f"bad config {spec}: {str(e).strip().splitlines()[-1]}") from None
    if not isinstance(config, ml_collections.ConfigDict):  # config_flags defers load errors
        raise ConfigError(f"cannot load config {spec}: {getattr(config, 'message', config)}")
    for arg in nones:
        *parents, leaf = arg.removeprefix("--config.").partition("=")[0].split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = None
    check_pixel_budgets(config)
    return config


# ℓ∞ budgets on the [0, 1] pixel scale (a radius, or a tuple of them), by dotted field name.
LINF_BUDGETS = ("eps", "autoattack_eps", "radii_linf", "params.eps")


def check_pixel_budgets(config: ml_collections.ConfigDict) -> None:
    """Refuse an ℓ∞ budget above 1 (on [0, 1] images it allows every image: a budget on the
    [0, 255] scale given by mistake), naming the field and the ε it probably meant."""
    params = config.get("params")
    for field, value in flat(config):
        if field not in LINF_BUDGETS or (field == "params.eps" and params.get("norm") == "l2"):
            continue
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, int | float) and not isinstance(v, bool) and v > 1:
                raise ConfigError(
                    f"--config.{field}: an ℓ∞ budget of {v:g} is above 1, the whole [0, 1] "
                    f"pixel range; budgets are on the [0, 1] scale: did you mean {v:g}/255 "
                    f"(= {v / 255:.4g})?"
                )


def suggest(field: str, known: list[str]) -> list[str]:
    """The known dotted fields ``field`` was probably meant to be: those whose last name is
    ``field``'s (``eps`` → ``params.eps``), else those whose last name is close to it, else
    those close as a whole (at most three)."""
    leaf = field.rpartition(".")[2]
    leaves = {k: k.rpartition(".")[2] for k in known}
    same = [k for k, v in leaves.items() if v == leaf]
    if same:
        return same[:3]
    close = difflib.get_close_matches(leaf, sorted(set(leaves.values())), n=3)
    by_leaf = [k for c in close for k, v in leaves.items() if v == c]
    return by_leaf[:3] or difflib.get_close_matches(field, known, n=1)


def flat(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted field, value)`` of every leaf, in order: for ``--help`` and logs."""
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as JSON-ready data (tuples as lists), for results files."""
    return json.loads(json.dumps(config.to_dict()))


def _annotation_type(cls, name: str) -> type:
    """The non-None type of a dataclass field whose annotation is ``X | None``."""
    text = next(f.type for f in dataclasses.fields(cls) if f.name == name)
    head = str(text).split("|")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": bool}.get(head.split("[")[0], tuple)


def as_config_dict(obj) -> ml_collections.ConfigDict:
    """A frozen dataclass as a ConfigDict (its fields, nested dataclasses as sub-configs);
    ``None`` fields become typed placeholders, so they stay overridable."""
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = as_config_dict(value)
        elif value is None:
            value = ml_collections.config_dict.placeholder(_annotation_type(type(obj), f.name))
        elif f.name == "lambda_init":
            value = str(value)  # a float or "schedule": one string field on the command line
        setattr(out, f.name, value)
    return out
