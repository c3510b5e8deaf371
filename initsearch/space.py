"""Search spaces: per role, the init choices and a scale range; per-layer scales; init steps.

A space file (``spaces/*.yaml``)::

    format: initsearch.space
    version: 1
    description: ...
    extends: default           # optional: start from another space (roles merge, role: null drops)
    roles:
      conv:
        init: [default, he, {scheme: he, mode: fan_out}, orthogonal]
        scale: [0.25, 4.0]     # log-uniform multiplier; omit to keep 1
      norm:
        init: [default]
    layer_scales:              # optional: one log-uniform multiplier per layer whose path matches
      "stages.*.conv1": [0.5, 2.0]
    steps:                     # optional: slots of network-level steps, run in slot order
      static: [none, fixup, {step: emergence, alpha: [1.0, 1.5]}]   # [lo, hi]: searched
      data: [none, lsuv, gradinit_fast, gradinit]
    role_overrides: {}         # {module-path glob: role} for models discovery cannot read

Sampling is define-by-run: for each role an Optuna categorical ``<role>.init``, then -- unless
the choice is ``zero``, where a scale means nothing -- a log-uniform ``<role>.scale``; for each
layer matched by ``layer_scales`` a log-uniform ``layer.<path>.scale``; for each step slot a
categorical ``steps.<slot>`` and, for a chosen step with searched options, one log-uniform
``steps.<slot>.<step>.<option>`` each. Static step slots must come before data-dependent ones.

A space is *bound* to a model (:meth:`Space.bind`) before sampling: that drops the roles the
model lacks, expands ``layer_scales`` globs to the model's layers, and picks the baselines
that apply to it. Roles the space does not list keep PyTorch's default init.
"""
from __future__ import annotations

import hashlib
import json

import copy
import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import optuna
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from initsearch.data import EXAMPLE_INPUT
from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, Recipe, RoleInit, StepInit, why_not
from initsearch.roles import ROLES, Roles, discover_roles
from initsearch.schema import StrictModel, validate
from initsearch.schemes import STEPS

FORMAT, VERSION = "initsearch.space", 1
SPACES_DIR = Path(__file__).resolve().parent.parent / "spaces"


@dataclass(frozen=True)
class RoleSpace:
    choices: tuple[RoleInit, ...]
    scale: tuple[float, float] | None = None

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.choices]


@dataclass(frozen=True)
class StepChoice:
    """A step with its fixed options, plus ``{option: (lo, hi)}`` searched log-uniformly."""

    step: StepInit
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.step.label


@dataclass(frozen=True)
class Space:
    name: str
    roles: Mapping[str, RoleSpace]
    description: str = ""
    role_overrides: Mapping[str, str] = field(default_factory=dict)
    layer_scales: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    steps: Mapping[str, tuple[StepChoice | None, ...]] = field(default_factory=dict)
    present_roles: frozenset[str] | None = None  # set by bind(): the roles the model has
    inapplicable: Mapping[str, str] = field(default_factory=dict)  # by bind(): baseline -> why not
    model_roles: Roles | None = None  # by bind(): the model's roles, discovered once, passed on

    def bind(self, model: nn.Module) -> "Space":
        """This space for ``model``: only the roles it has, ``layer_scales`` globs expanded to
        its layer paths (each must match a layer), only the static steps that apply to it
        (T-Fixup refuses a model with LayerNorm, Fixup one without residual blocks, ...), and
        the baselines that apply to it. The model's roles are discovered once, here."""
        roles = discover_roles(model, self.role_overrides)
        _runs_on_images(model)
        layers = {}
        for pattern, bounds in self.layer_scales.items():
            matched = [p for p in roles if fnmatch.fnmatchcase(p, pattern)]
            if not matched:
                raise UsageError(f"space {self.name!r}: layer_scales pattern {pattern!r} matches no "
                                 "layer of the model; check it against `initsearch roles`")
            layers.update(dict.fromkeys(matched, bounds))
        present = frozenset(roles.values())
        refused = {name: why for name in BASELINES
                   if (why := why_not(name, model, self.role_overrides, roles))}
        steps = {slot: tuple(c for c in choices if c is None or c.step.needs_data
                             or _applies(c.step, model, roles))
                 for slot, choices in self.steps.items()}
        return replace(self, roles={r: rs for r, rs in self.roles.items() if r in present},
                       layer_scales=layers, steps=steps, present_roles=present,
                       inapplicable=refused, model_roles=roles)

    def sample(self, trial: optuna.Trial, name: str | None = None) -> Recipe:
        """Draw a recipe from the space (define-by-run, so enqueued params are honoured);
        it is called ``name``, or ``trial-<number>``."""
        roles = {}
        for role, rs in self.roles.items():
            init = RoleInit.from_label(trial.suggest_categorical(f"{role}.init", rs.labels))
            if rs.scale and init.scheme != "zero":
                init = RoleInit(init.scheme, init.options,
                                trial.suggest_float(f"{role}.scale", *rs.scale, log=True))
            roles[role] = init
        layer_scales = {path: trial.suggest_float(f"layer.{path}.scale", *bounds, log=True)
                        for path, bounds in self.layer_scales.items()}
        steps = []
        for slot, choices in self.steps.items():
            label = trial.suggest_categorical(f"steps.{slot}", _labels(choices))
            choice = next((c for c in choices if c and c.label == label), None)
            if choice is not None:
                searched = {opt: trial.suggest_float(f"steps.{slot}.{choice.step.name}.{opt}", lo, hi,
                                                     log=True)
                            for opt, (lo, hi) in choice.ranges.items()}
                steps.append(StepInit(choice.step.name, {**choice.step.options, **searched}))
        return Recipe(roles, name or f"trial-{trial.number}", self.role_overrides,
                      steps=tuple(steps), layer_scales=layer_scales)

    def params_for(self, recipe: Recipe) -> dict[str, Any]:
        """The Optuna params under which :meth:`sample` reproduces ``recipe`` (for enqueueing).

        Raises:
            UsageError: the space cannot express the recipe (it says what to add).
        """
        params: dict[str, Any] = {}
        for role, rs in self.roles.items():
            init = recipe.roles.get(role, RoleInit())
            if init.label not in rs.labels:
                raise UsageError(f"space {self.name!r} cannot express recipe {recipe.name!r}: role "
                                 f"{role!r} lacks {init.label!r}; add it to roles.{role}.init")
            params[f"{role}.init"] = init.label
            if rs.scale and init.scheme != "zero":
                params[f"{role}.scale"] = _inside(init.scale, rs.scale, f"{role}.scale", recipe)
        for path, bounds in self.layer_scales.items():
            value = recipe.layer_scales.get(path, 1.0)
            params[f"layer.{path}.scale"] = _inside(value, bounds, f"layer {path}", recipe)
        wanted = list(recipe.steps)
        for slot, choices in self.steps.items():
            params[f"steps.{slot}"] = "none"
            for choice in filter(None, choices):
                step = next((s for s in wanted if _fits(s, choice)), None)
                if step is not None:
                    wanted.remove(step)
                    params[f"steps.{slot}"] = choice.label
                    for opt, bounds in choice.ranges.items():
                        value = step.options.get(opt, _default(step, opt))
                        params[f"steps.{slot}.{step.name}.{opt}"] = _inside(value, bounds, opt, recipe)
                    break
            if params[f"steps.{slot}"] == "none" and None not in choices:
                raise UsageError(f"space {self.name!r} cannot express recipe {recipe.name!r}: step "
                                 f"slot {slot!r} has no 'none'; add none to steps.{slot}")
        if wanted:
            raise UsageError(f"space {self.name!r} cannot express recipe {recipe.name!r}: no step "
                             f"slot offers {', '.join(s.label for s in wanted)}; add it under steps")
        return params

    def baselines(self) -> dict[str, Recipe]:
        """The published schemes (:data:`initsearch.recipe.BASELINES`) this space can express,
        restricted to its roles -- and, once bound, only those that apply to the model."""
        out = {}
        for name, b in BASELINES.items():
            if name in self.inapplicable:
                continue
            # once bound, a role the model has but the space does not search must stay default
            unsearched = {r for r, i in b.roles.items() if r not in self.roles and i != RoleInit()
                          and self.present_roles is not None and r in self.present_roles}
            if unsearched:
                continue
            recipe = replace(b, roles={r: i for r, i in b.roles.items() if r in self.roles},
                             role_overrides=self.role_overrides)
            try:
                self.params_for(recipe)
            except UsageError:
                continue
            out[name] = recipe
        return out

    def content(self) -> dict[str, Any]:
        """What the search draws from, as plain data: the roles with their choices and scale
        ranges, the layer scales, the step slots, the role overrides and -- once bound -- the
        roles the model has and the baselines that apply. Name and description are left out."""
        return {"roles": {r: [[c.to_dict() for c in rs.choices], rs.scale and list(rs.scale)]
                             for r, rs in sorted(self.roles.items())},
                   "layer_scales": {g: list(b) for g, b in sorted(self.layer_scales.items())},
                   "steps": {slot: [c and [c.step.label, {k: list(r) for k, r in c.ranges.items()}]
                                    for c in cs]
                             for slot, cs in sorted(self.steps.items())},
                   "role_overrides": dict(sorted(self.role_overrides.items())),
                   "present_roles": sorted(self.present_roles or ()),
                   "baselines": sorted(self.baselines())}

    def content_hash(self) -> str:
        """SHA-256 of :meth:`content`: two spaces with the same hash sample the same recipes."""
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()


def _applies(step: StepInit, model: nn.Module, roles) -> bool:
    """The static step runs on (a copy of) the model without refusing it (or failing on it: a
    step that cannot handle some model must not stop the search, only leave the space)."""
    try:
        with torch.random.fork_rng(devices=[]):  # the global stream is not the probe's to use
            STEPS[step.name](copy.deepcopy(model), roles, None, **step.options)
    except Exception:  # noqa: BLE001 -- any failure means: not for this model
        return False
    return True


def _labels(choices) -> list[str]:
    return [c.label if c else "none" for c in choices]


def _fits(step: StepInit, choice: StepChoice) -> bool:
    """``step`` is ``choice`` with its searched options set to anything."""
    fixed = {k: v for k, v in step.options.items() if k not in choice.ranges}
    return step.name == choice.step.name and fixed == dict(choice.step.options)


def _default(step: StepInit, option: str) -> Any:
    return STEPS[step.name].defaults[option]


def _inside(value: float, bounds: tuple[float, float], what: str, recipe: Recipe) -> float:
    if not bounds[0] <= value <= bounds[1]:
        raise UsageError(f"recipe {recipe.name!r}: {what} = {value} is outside the space's "
                         f"range {list(bounds)}")
    return value


def available_spaces() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SPACES_DIR.glob("*.yaml"))}


def load_space(name_or_path: str) -> Space:
    """Load a space by name (a file in ``spaces/``) or by path, validating it against the schema."""
    raw, path = _read(name_or_path, seen=())
    return parse_space(raw, path.stem, where=str(path))


def _read(name_or_path: str, seen: tuple[str, ...]) -> tuple[Any, Path]:
    """A space file's YAML, with ``extends: <space name or file>`` resolved (a relative file
    path is read beside the extending file): the base's keys, then this file's -- ``roles``
    merged role by role (``role: null`` drops one), other keys replaced."""
    path = Path(name_or_path)
    if not path.suffix:
        spaces = available_spaces()
        if name_or_path not in spaces:
            raise UsageError(f"unknown space {name_or_path!r}; choose one of: {', '.join(spaces)} "
                             "or pass a path to a space file")
        path = spaces[name_or_path]
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read space file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"space file {path} is not valid YAML ({str(exc).splitlines()[0]}); "
                         "fix its syntax") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw, path
    if str(path) in seen:
        raise UsageError(f"space file {path}: 'extends' loops back to itself; break the cycle")
    ref = Path(str(raw["extends"]))
    if ref.suffix and not ref.is_absolute():  # a file beside this one, not beside the cwd
        ref = path.parent / ref
    base, base_path = _read(str(ref), (*seen, str(path)))
    if not isinstance(base, dict):
        raise UsageError(f"space file {path}: extends {base_path}, which is not a space file")
    merged = {**base, **{k: v for k, v in raw.items() if k not in ("extends", "roles")}}
    roles = {**(base.get("roles") or {}), **(raw.get("roles") or {})}
    merged["roles"] = {r: spec for r, spec in roles.items() if spec is not None}
    return merged, path


class _Options(BaseModel):
    """A choice given with options (``{scheme: he, mode: fan_out}``): the options are the
    scheme's or the step's own, checked by :class:`RoleInit` / :class:`StepInit`."""

    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SchemeSpec(_Options):
    scheme: str


class StepSpec(_Options):
    step: str


#: A log-uniform range's shape; :func:`_bounds` checks its values.
Bounds = Annotated[list[float], Field(min_length=2, max_length=2,
                                      description="[lo, hi], two numbers")]
Slot = Annotated[list[str | StepSpec | None], Field(
    min_length=1, description="a list of steps: none, a step name or {step: name, option: value}")]
Role = Annotated[Literal[ROLES], Field(description=f"a role: {', '.join(ROLES)}")]


class RoleSpec(StrictModel):
    init: list[str | SchemeSpec] = Field(
        min_length=1,
        description="a list of init choices: scheme names or {scheme: name, option: value}")
    scale: Bounds | None = None


class SpaceFile(StrictModel):
    """A space file's shape, once ``extends`` is resolved (:func:`_read`)."""

    format: Literal[FORMAT]
    version: Literal[VERSION]
    description: str = ""
    roles: dict[str, Annotated[RoleSpec, Field(description="{init: [choices...], scale: [lo, hi]}")]] \
        = Field(min_length=1,
                description="a mapping of at least one role to {init: [...], scale: [lo, hi]}")
    layer_scales: dict[str, Bounds] | None = Field(
        None, description="a mapping of module-path globs to [lo, hi]")
    steps: dict[str, Slot] | None = Field(
        None, description="a mapping of slot names to lists of steps, e.g. {data: [none, lsuv]}")
    role_overrides: dict[str, Role] | None = Field(
        None, description="a mapping of module-path globs to roles")


def parse_space(raw: Any, name: str, where: str) -> Space:
    """The space in ``raw`` (a file's YAML, ``extends`` resolved, read from ``where``): its shape
    checked by :class:`SpaceFile`, then what the shape cannot say -- known roles, schemes and
    steps that apply, ranges that hold 1, static step slots first, a baseline to compare with.

    Raises:
        UsageError: one line naming the file, the key and what it must be.
    """
    what = f"space file {where}"
    spec = validate(SpaceFile, raw, what)

    def bad(msg: str) -> UsageError:
        return UsageError(f"{what}: {msg}")

    roles = {}
    for role, rs in spec.roles.items():
        if role not in ROLES:
            raise bad(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        choices = []
        for c in rs.init:
            try:
                choices.append(RoleInit(c) if isinstance(c, str) else RoleInit(c.scheme, c.options))
                Recipe({role: choices[-1]})  # checks the scheme applies to this role
            except UsageError as exc:
                raise bad(f"roles.{role}.init: {exc}") from None
        roles[role] = RoleSpace(tuple(choices), None if rs.scale is None else
                                _bounds(rs.scale, f"roles.{role}.scale", bad))
    layer_scales = {g: _bounds(b, f"layer_scales[{g!r}]", bad)
                    for g, b in (spec.layer_scales or {}).items()}
    steps = _parse_steps(spec.steps or {}, bad)
    space = Space(name, roles, spec.description, dict(spec.role_overrides or {}), layer_scales, steps)
    if not space.baselines():
        raise bad("the space can express none of the baselines "
                  f"({', '.join(BASELINES)}); add 'default' to each role's init")
    return space


def _bounds(value: Any, what: str, bad, around_one: bool = True) -> tuple[float, float]:
    """``[lo, hi]`` of a log-uniform range; a scale range must hold 1 (the baselines' value)."""
    numbers = (isinstance(value, list) and len(value) == 2
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if around_one and not (numbers and 0 < value[0] <= 1.0 <= value[1]):
        raise bad(f"{what} must be [lo, hi] with 0 < lo <= 1 <= hi "
                  f"(1 must be inside so the baselines can run), not {value!r}")
    if not (numbers and 0 < value[0] <= value[1]):
        raise bad(f"{what} must be [lo, hi] with 0 < lo <= hi (searched log-uniformly), not {value!r}")
    return float(value[0]), float(value[1])


def _parse_steps(raw: dict[str, list[str | StepSpec | None]],
                 bad) -> dict[str, tuple[StepChoice | None, ...]]:
    """Each slot's steps; an option given as ``[lo, hi]`` is searched (the step's options are
    its own, so their ranges are checked here, not by :class:`SpaceFile`)."""
    slots, kinds = {}, []
    for slot, choices in raw.items():
        parsed = []
        for c in choices:
            if c in ("none", None):
                parsed.append(None)
                continue
            name, opts = (c, {}) if isinstance(c, str) else (c.step, c.options)
            ranges = {k: _bounds(v, f"steps.{slot}.{name}.{k}", bad, around_one=False)
                      for k, v in opts.items() if isinstance(v, list)}
            for k in ranges:
                default = STEPS[name].defaults.get(k) if name in STEPS else None
                if default is not None and not isinstance(default, float):
                    raise bad(f"steps.{slot}.{name}.{k}: only real-valued options can be "
                              f"searched with [lo, hi]; give one value")
            try:
                step = StepInit(name, {k: v for k, v in opts.items() if k not in ranges})
                for k, (lo, hi) in ranges.items():  # both ends must be valid values of the option
                    StepInit(step.name, {**step.options, k: lo}), StepInit(step.name, {**step.options, k: hi})
            except UsageError as exc:
                raise bad(f"steps.{slot}: {exc}") from None
            parsed.append(StepChoice(step, ranges))
        slot_kinds = {c.step.needs_data for c in parsed if c}
        if len(slot_kinds) > 1:
            raise bad(f"steps.{slot} mixes static and data-dependent steps; give each kind its slot")
        kinds += list(slot_kinds)
        slots[slot] = tuple(parsed)
    if kinds != sorted(kinds):
        raise bad("a data-dependent step slot (lsuv, gradinit) comes before a static one; "
                  "list the static slots first")
    return slots


def _runs_on_images(model: nn.Module) -> None:
    """One clear line when the model cannot take a batch of CIFAR-10 images (every baseline
    check and trial would fail on it otherwise, each with its own message)."""
    modes = {m: m.training for m in model.modules()}
    try:
        device = next(model.parameters()).device
        with torch.no_grad():  # eval: no running statistic moves
            model.eval()(torch.zeros(2, *EXAMPLE_INPUT, device=device))
    except Exception as exc:  # noqa: BLE001 -- a model of any kind
        shape = "x".join(map(str, EXAMPLE_INPUT))
        raise UsageError(f"the model does not run on {shape} images (CIFAR-10): "
                         f"{type(exc).__name__}: {str(exc)[:160]}; build it for 32x32 inputs "
                         "(e.g. --arch-opt img_size=32)") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
