"""The attacks' configs and their registry, on the standard library alone.

    config = attack_config("apgd-t", eps=8 / 255, norm="linf", steps=100)   # validated
    fn, config = build_attack("apgd-t", eps=8 / 255)                        # fn imports JAX

Every attack of :mod:`diffjax.attacks` is configured by a frozen dataclass defined here
(:class:`PGDConfig`, :class:`APGDConfig`, :class:`CWConfig`, :class:`FABConfig`,
:class:`SquareConfig`, :class:`AutoAttackConfig`), validated in ``__post_init__``, and named in
:data:`ATTACKS`; the attack functions are imported on first use. So the command line lists and
checks an attack's config (``diffjax attack --help``, a bad ``--config.params`` field or value)
before it imports JAX.

``ATTACKS[name]`` is an :class:`AttackSpec`: the attack function, its config class and the
fields the name fixes (``"apgd-t"`` is APGD with ``loss="dlr-targeted"``). :func:`build_attack`
rejects unknown names, unknown fields and attempts to override a fixed field with a ValueError
that names them, so a command line can pass its flags through unchanged.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

# The named losses of PGD (diffjax.attacks.losses.LOSSES maps them to their functions).
PGD_LOSSES = ("ce", "margin")

# Config validation shared by the attack configs (frozen dataclasses validate in __post_init__).


def check_nonnegative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def check_eps(eps: Any, norm: str | None = None, pixels: int | None = None) -> None:
    """A radius ≥ 0 on the [0, 1] pixel scale: with ``norm="linf"`` at most 1 (the whole pixel
    range), with ``norm="l2"`` and the image's ``pixels`` (H·W·C) at most the diagonal √pixels
    of the image cube. Larger radii allow every image: they are budgets on the [0, 255] scale
    given by mistake, refused with the ε they probably meant."""
    jax = sys.modules.get("jax")  # a trace needs JAX loaded; validating a config does not
    if jax is not None and isinstance(eps, jax.core.Tracer):
        return  # a per-example radius inside a trace (several budgets in one call)
    check_nonnegative("eps", eps)
    if norm == "linf" and eps > 1:
        bound = "1, the whole [0, 1] pixel range"
    elif norm == "l2" and pixels is not None and eps > math.sqrt(pixels):
        bound = f"√{pixels} = {math.sqrt(pixels):.4g}, the diagonal of the [0, 1] image cube"
    else:
        return
    raise ValueError(
        f"eps = {eps:g} ({norm}) is above {bound}, so every image is in the ball; eps is on "
        f"the [0, 1] pixel scale: did you mean {eps:g}/255 (= {eps / 255:.4g})?"
    )


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_fraction(name: str, value: Any, *, zero: bool = False) -> None:
    """A number in (0, 1], or [0, 1] with ``zero``."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (number and (0 <= value if zero else 0 < value) and value <= 1):
        raise ValueError(f"{name} must lie in {'[' if zero else '('}0, 1], got {value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_norm(norm: Any, allowed: tuple[str, ...] = ("linf", "l2")) -> None:
    if norm not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}")


L2_STEP_FRACTION = 0.25  # PGD-ℓ2's default step is at least ε/4 (see PGDConfig)


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """PGD settings.

    Attributes:
      eps: radius of the threat model, pixel units on the [0, 1] scale (e.g. 4/255).
      norm: ``"linf"`` or ``"l2"``.
      steps: gradient steps per restart.
      step_size: α; ``None`` chooses by norm (see below).
      restarts: independent random starts; later ones run only on examples not yet fooled.
      random_start: start uniformly in the ε-ball (else at the clean image; then restarts = 1).
      loss: ``"ce"``, ``"margin"`` (max_{i≠y} z_i − z_y), or a callable
        ``loss_fn(logits [B, K], labels [B]) -> [B]`` to maximise (given the targets when
        targeted, used as is).
      targeted: move toward ``targets`` (success = prediction equals the target).

    Default step sizes:

    * ℓ∞: α = 2.5·ε/steps (Madry et al. 2018, Appendix A): sign steps move every coordinate by α,
      so a path of 2.5ε reaches any vertex of the ε-cube from any start with room to spare.
    * ℓ2: α = max(2.5/steps, 1/4)·ε. Madry's rule fails in ℓ2 because from a random start (whose
      direction is almost orthogonal to the gradient in high dimension) the iterate has to
      *rotate* on the sphere of radius ε toward the best direction, and a step of α followed by
      the projection turns the angle θ to the optimum into atan(sin θ / (cos θ + α/ε)), i.e.
      shrinks it by the factor ≈ 1/(1 + α/ε) per step whatever the number of steps. With
      α = 2.5ε/steps the total contraction stays ≈ e^(−2.5) however many steps are taken (only
      13/40 examples of a linear two-class model are fooled at 1.02× their minimal ℓ2 distance,
      7/40 with 1,000 steps). A step that is a fixed fraction of ε makes the contraction
      geometric in the number of steps: with α = ε/4, θ goes from π/2 to 0.02 rad in 20 steps
      (cos θ = 0.9998, so 1.02× the minimal distance is plenty; 10 steps reach 0.198 rad, the
      1.02× limit acos(1/1.02)). The fraction ε/4 is of the size torchattacks uses for PGD-ℓ2
      (α = 0.2, ε = 1.0) and far below APGD's initial step 2ε (Croce & Hein 2020), so
      non-linear models are not overshot more than by those. Below 10 steps Madry's larger
      2.5ε/steps is kept.
    """

    eps: float
    norm: str = "linf"
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str | Callable = "ce"
    targeted: bool = False

    def __post_init__(self):
        check_norm(self.norm)
        check_eps(self.eps, self.norm)
        check_int("steps", self.steps, 1)
        check_int("restarts", self.restarts, 1)
        check_bool("random_start", self.random_start)
        check_bool("targeted", self.targeted)
        if self.step_size is not None:
            check_positive("step_size", self.step_size)
        if not callable(self.loss) and self.loss not in PGD_LOSSES:
            raise ValueError(f"loss must be one of {PGD_LOSSES} or a callable")
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 without random_start would repeat the same run")

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        madry = 2.5 * self.eps / max(self.steps, 1)
        if self.norm == "l2":
            import jax.numpy as jnp  # eps may be traced (one call, several budgets)

            return jnp.maximum(madry, L2_STEP_FRACTION * self.eps)
        return madry


APGD_LOSSES = ("ce", "dlr", "dlr-targeted")


@dataclasses.dataclass(frozen=True)
class APGDConfig:
    """APGD settings (defaults: AutoAttack's).

    Attributes:
      eps: radius, pixel units on the [0, 1] scale.
      norm: ``"linf"`` or ``"l2"``.
      steps: iterations N per run.
      restarts: runs (per target for APGD-T); later ones only on examples not yet fooled.
      loss: ``"ce"`` (APGD-CE), ``"dlr"`` (needs K ≥ 3) or ``"dlr-targeted"`` (APGD-T, K ≥ 4).
      num_targets: APGD-T's targets, the 2nd … (num_targets + 1)-th most likely classes.
      rho: the checkpoint's fraction of loss-increasing steps below which η is halved.
      momentum: α after the first step.
      eot_iter: Expectation over Transformation: draws of a randomised model averaged per
        gradient (AutoAttack's ``rand`` version: 20). Above 1 the model function takes
        ``(images, keys [B])``; the draws of example e are keyed by its key, so they do not
        depend on the batch.
    """

    eps: float
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    num_targets: int = 9
    rho: float = 0.75
    momentum: float = 0.75
    eot_iter: int = 1

    def __post_init__(self):
        check_norm(self.norm)
        check_eps(self.eps, self.norm)
        check_int("steps", self.steps, 1)
        check_int("restarts", self.restarts, 1)
        check_int("num_targets", self.num_targets, 1)
        check_int("eot_iter", self.eot_iter, 1)
        if self.loss not in APGD_LOSSES:
            raise ValueError(f"loss must be one of {APGD_LOSSES}, got {self.loss!r}")
        check_fraction("rho", self.rho)
        check_fraction("momentum", self.momentum)

    @property
    def runs(self) -> int:
        return self.restarts * (self.num_targets if self.loss == "dlr-targeted" else 1)

    @property
    def draws(self) -> int:
        """Model evaluations per iterate."""
        return self.eot_iter

    @property
    def min_classes(self) -> int:
        if self.loss == "dlr-targeted":
            return max(4, self.num_targets + 1)
        return 3 if self.loss == "dlr" else 2


@dataclasses.dataclass(frozen=True)
class CWConfig:
    """CW-L2 settings (defaults: Carlini & Wagner's reference implementation).

    Attributes:
      confidence: κ, the logit margin a success must exceed.
      binary_search_steps: outer steps over the constant c.
      max_iterations: Adam steps per binary-search step.
      learning_rate: Adam step size in tanh space.
      initial_const: c of the first binary-search step.
      abort_early: per-example early abort (see module docstring).
      targeted: reach ``targets`` instead of leaving the label.
    """

    confidence: float = 0.0
    binary_search_steps: int = 9
    max_iterations: int = 10000
    learning_rate: float = 1e-2
    initial_const: float = 1e-3
    abort_early: bool = True
    targeted: bool = False

    def __post_init__(self):
        check_nonnegative("confidence", self.confidence)
        check_int("binary_search_steps", self.binary_search_steps, 1)
        check_int("max_iterations", self.max_iterations, 1)
        check_positive("learning_rate", self.learning_rate)
        check_positive("initial_const", self.initial_const)
        check_bool("abort_early", self.abort_early)
        check_bool("targeted", self.targeted)


@dataclasses.dataclass(frozen=True)
class FABConfig:
    """FAB-T settings (defaults: AutoAttack's).

    Attributes:
      eps: success radius, pixel units on the [0, 1] scale.
      norm: ``"linf"`` or ``"l2"``.
      steps: iterations per run.
      restarts: runs per target (restart r > 0 starts at random); only on examples not fooled.
      num_targets: targets, the 2nd … (num_targets + 1)-th most likely classes.
      alpha_max: cap on the bias toward the clean image.
      eta: extrapolation factor of the projection step.
      beta: pull-back factor toward the clean image after an adversarial iterate.
    """

    eps: float
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    num_targets: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self):
        check_norm(self.norm)
        check_eps(self.eps, self.norm)
        check_int("steps", self.steps, 1)
        check_int("restarts", self.restarts, 1)
        check_int("num_targets", self.num_targets, 1)
        check_fraction("alpha_max", self.alpha_max, zero=True)
        check_fraction("beta", self.beta)
        check_positive("eta", self.eta)

    @property
    def runs(self) -> int:
        return self.restarts * self.num_targets


@dataclasses.dataclass(frozen=True)
class SquareConfig:
    """Square-ℓ∞ settings (defaults: AutoAttack's).

    Attributes:
      eps: radius, pixel units on the [0, 1] scale.
      queries: iterations after the initialisation (each one model evaluation).
      p_init: initial fraction of pixels in the square.
      norm: ``"linf"`` or ``"l2"``.
    """

    eps: float
    queries: int = 5000
    p_init: float = 0.8
    norm: str = "linf"

    def __post_init__(self):
        check_norm(self.norm)
        check_eps(self.eps, self.norm)
        check_int("queries", self.queries, 0)
        check_fraction("p_init", self.p_init)


STANDARD = {
    "linf": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "l2": ("apgd-ce", "apgd-t", "fab-t", "square"),
}
RAND = ("apgd-ce", "apgd-dlr")  # the `rand` version, both with EOT
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
VERSIONS = ("standard", "rand")


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """AutoAttack settings (defaults: the standard version).

    Attributes:
      eps: radius, pixel units on the [0, 1] scale.
      norm: ``"linf"`` or ``"l2"``.
      version: ``"standard"`` (APGD-CE → APGD-T → FAB-T → Square, deterministic models) or
        ``"rand"`` (APGD-CE → APGD-DLR, each with ``eot_iter`` EOT draws, for randomised
        models: the model function then takes ``(images, keys [B])``).
      stages: attacks in order, from ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ``"fab-t"``,
        ``"square"``; ``None`` for the version's sequence.
      steps: iterations of APGD and FAB runs.
      num_targets: targets of APGD-T and FAB-T.
      square_queries: Square's query budget.
      eot_iter: EOT draws per APGD gradient in the ``rand`` version.
    """

    eps: float
    norm: str = "linf"
    version: str = "standard"
    stages: tuple[str, ...] | None = None
    steps: int = 100
    num_targets: int = 9
    square_queries: int = 5000
    eot_iter: int = 20

    def __post_init__(self):
        check_norm(self.norm)
        check_eps(self.eps, self.norm)
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        check_int("steps", self.steps, 1)
        check_int("num_targets", self.num_targets, 1)
        check_int("square_queries", self.square_queries, 0)
        check_int("eot_iter", self.eot_iter, 1)
        if self.stages is not None:
            if not isinstance(self.stages, tuple) or not self.stages:
                raise ValueError("stages must be a non-empty tuple of attack names")
            bad = [s for s in self.stages if s not in STAGES]
            if bad:
                raise ValueError(f"unknown stages {bad}; choose from {STAGES}")
            if self.version == "rand" and any(s in ("fab-t", "square") for s in self.stages):
                raise ValueError("the rand version runs the APGD stages only (they have EOT)")

    @property
    def sequence(self) -> tuple[str, ...]:
        if self.stages is not None:
            return self.stages
        return STANDARD[self.norm] if self.version == "standard" else RAND

    @property
    def randomized(self) -> bool:
        return self.version == "rand"

    def stage_config(self, name: str):
        """The config of one stage, with AutoAttack's settings (one run per target)."""
        eot = self.eot_iter if self.randomized else 1
        if name in ("apgd-ce", "apgd-dlr"):
            loss = "ce" if name == "apgd-ce" else "dlr"
            return APGDConfig(self.eps, self.norm, self.steps, loss=loss, eot_iter=eot)
        if name == "apgd-t":
            return APGDConfig(
                self.eps,
                self.norm,
                self.steps,
                loss="dlr-targeted",
                num_targets=self.num_targets,
                eot_iter=eot,
            )
        if name == "fab-t":
            return FABConfig(self.eps, self.norm, self.steps, num_targets=self.num_targets)
        return SquareConfig(self.eps, self.square_queries, norm=self.norm)

    @property
    def min_classes(self) -> int:
        targeted = any(s in ("apgd-t", "fab-t") for s in self.sequence)
        if targeted:
            return max(4, self.num_targets + 1)
        return 3 if "apgd-dlr" in self.sequence else 2


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One named attack.

    Attributes:
      function: where the attack is, ``"MODULE:NAME"`` (imported by :attr:`fn`, first use).
      config_cls: its frozen config dataclass.
      fixed: config fields the name determines (they may not be passed to :func:`build_attack`).
    """

    function: str
    config_cls: type
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        bad = sorted(set(self.fixed) - names)
        if bad:
            raise ValueError(f"{self.config_cls.__name__} has no fields {bad}")
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))

    @property
    def fn(self) -> Callable:
        """The attack, ``fn(model_fn, images, labels, key, config, *, ids=None, ...)``."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

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
        "pgd": AttackSpec("diffjax.attacks.pgd:pgd", PGDConfig),
        "apgd-ce": AttackSpec("diffjax.attacks.apgd:apgd", APGDConfig, {"loss": "ce"}),
        "apgd-dlr": AttackSpec("diffjax.attacks.apgd:apgd", APGDConfig, {"loss": "dlr"}),
        "apgd-t": AttackSpec("diffjax.attacks.apgd:apgd", APGDConfig, {"loss": "dlr-targeted"}),
        "cw": AttackSpec("diffjax.attacks.cw:cw_l2", CWConfig),
        "square": AttackSpec("diffjax.attacks.square:square", SquareConfig),
        "fab-t": AttackSpec("diffjax.attacks.fab:fab_targeted", FABConfig),
        "autoattack": AttackSpec(
            "diffjax.attacks.autoattack:autoattack", AutoAttackConfig, {"version": "standard"}
        ),
        "autoattack-rand": AttackSpec(
            "diffjax.attacks.autoattack:autoattack", AutoAttackConfig, {"version": "rand"}
        ),
    }
)


def build_attack(name: str, **fields) -> tuple[Callable, Any]:
    """The attack function and its config for a registry name and config fields.

    Args:
      name: a key of :data:`ATTACKS`.
      **fields: as :func:`attack_config`.

    Returns:
      ``(fn, config)``; call ``fn(model_fn, images, labels, key, config)``.

    Raises:
      ValueError: as :func:`attack_config`.
    """
    config = attack_config(name, **fields)
    return ATTACKS[name].fn, config


def attack_config(name: str, **fields) -> Any:
    """The validated config of the attack ``name`` with ``fields`` set (no JAX imported).

    Args:
      name: a key of :data:`ATTACKS`.
      **fields: config fields (e.g. ``eps=4 / 255, norm="l2", steps=50``); ``None`` values are
        dropped, so unset command-line flags fall back to the config's defaults.

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
    return spec.config_cls(**spec.fixed, **fields)
