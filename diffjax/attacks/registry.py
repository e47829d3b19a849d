"""The attacks by their command-line names, and a validated ``(attack function, config)`` builder.

    fn, config = build_attack("apgd-t", eps=8 / 255, norm="linf", steps=100)
    result = fn(model_fn, images, labels, key, config)

``ATTACKS[name]`` is an :class:`AttackSpec`: the attack function, its config class and the
fields the name fixes (``"apgd-t"`` is APGD with ``loss="dlr-targeted"``). :func:`build_attack`
rejects unknown names, unknown fields and attempts to override a fixed field with a ValueError
that names them, so a command line can pass its flags through unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from diffjax.attacks.apgd import APGDConfig, apgd
from diffjax.attacks.autoattack import AutoAttackConfig, autoattack
from diffjax.attacks.cw import CWConfig, cw_l2
from diffjax.attacks.fab import FABConfig, fab_targeted
from diffjax.attacks.pgd import PGDConfig, pgd
from diffjax.attacks.square import SquareConfig, square


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One named attack.

    Attributes:
      fn: the attack, ``fn(model_fn, images, labels, key, config, *, ids=None, ...)``.
      config_cls: its frozen config dataclass.
      fixed: config fields the name determines (they may not be passed to :func:`build_attack`).
    """

    fn: Callable
    config_cls: type
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        bad = sorted(set(self.fixed) - names)
        if bad:
            raise ValueError(f"{self.config_cls.__name__} has no fields {bad}")
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))

    @property
    def fields(self) -> tuple[str, ...]:
        """The config fields a caller may set."""
        return tuple(
            f.name for f in dataclasses.fields(self.config_cls) if f.name not in self.fixed
        )

    @property
    def required(self) -> tuple[str, ...]:
        """Fields without a default (e.g. ``eps``)."""
        missing = dataclasses.MISSING
        return tuple(
            f.name
            for f in dataclasses.fields(self.config_cls)
            if f.name not in self.fixed and f.default is missing and f.default_factory is missing
        )


ATTACKS: Mapping[str, AttackSpec] = MappingProxyType(
    {
        "pgd": AttackSpec(pgd, PGDConfig),
        "apgd-ce": AttackSpec(apgd, APGDConfig, {"loss": "ce"}),
        "apgd-dlr": AttackSpec(apgd, APGDConfig, {"loss": "dlr"}),
        "apgd-t": AttackSpec(apgd, APGDConfig, {"loss": "dlr-targeted"}),
        "cw": AttackSpec(cw_l2, CWConfig),
        "square": AttackSpec(square, SquareConfig),
        "fab-t": AttackSpec(fab_targeted, FABConfig),
        "autoattack": AttackSpec(autoattack, AutoAttackConfig, {"version": "standard"}),
        "autoattack-rand": AttackSpec(autoattack, AutoAttackConfig, {"version": "rand"}),
    }
)


def build_attack(name: str, **fields) -> tuple[Callable, Any]:
    """The attack function and its config for a registry name and config fields.

    Args:
      name: a key of :data:`ATTACKS`.
      **fields: config fields (e.g. ``eps=4 / 255, norm="l2", steps=50``); ``None`` values are
        dropped, so unset command-line flags fall back to the config's defaults.

    Returns:
      ``(fn, config)``; call ``fn(model_fn, images, labels, key, config)``.

    Raises:
      ValueError: unknown name; a field the config does not have, or that the name fixes; a
        required field (``eps``) missing; or the config's own validation (bad values).
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    spec = ATTACKS[name]
    fields = {k: v for k, v in fields.items() if v is not None}
    fixed = sorted(set(fields) & set(spec.fixed))
    if fixed:
        raise ValueError(
            f"{name} fixes the fields {fixed} (to {dict(spec.fixed)}); do not pass them"
        )
    unknown = sorted(set(fields) - set(spec.fields))
    if unknown:
        raise ValueError(
            f"{name} has no fields {unknown}; its {spec.config_cls.__name__} takes {spec.fields}"
        )
    missing = [f for f in spec.required if f not in fields]
    if missing:
        raise ValueError(f"{missing} required for {name}")
    return spec.fn, spec.config_cls(**spec.fixed, **fields)
