"""Search spaces: per role, the init choices and the log-uniform scale range (files in ``spaces/``).

A space file::

    format: initsearch.space
    version: 1
    description: ...
    roles:
      conv:
        init: [default, he, {scheme: he, mode: fan_out}, orthogonal]
        scale: [0.25, 4.0]     # log-uniform multiplier; omit to keep 1
      norm:
        init: [default, zero]
    role_overrides: {}         # {module-path glob: role} for models discovery cannot read

Sampling is define-by-run: for each role, an Optuna categorical ``<role>.init`` over the
choices, then -- only when the choice is not ``zero``, where a scale means nothing -- a
log-uniform ``<role>.scale``. Roles the space does not list keep PyTorch's default init.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import optuna
import yaml

from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, Recipe, RoleInit
from initsearch.roles import ROLES

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
class Space:
    name: str
    roles: Mapping[str, RoleSpace]
    description: str = ""
    role_overrides: Mapping[str, str] = field(default_factory=dict)

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
        return Recipe(roles, name or f"trial-{trial.number}", self.role_overrides)

    def params_for(self, recipe: Recipe) -> dict[str, Any]:
        """The Optuna params under which :meth:`sample` reproduces ``recipe`` (for enqueueing)."""
        params: dict[str, Any] = {}
        for role, rs in self.roles.items():
            init = recipe.roles.get(role, RoleInit())
            if init.label not in rs.labels:
                raise UsageError(f"space {self.name!r} cannot express recipe {recipe.name!r}: role "
                                 f"{role!r} lacks {init.label!r}; add it to roles.{role}.init")
            params[f"{role}.init"] = init.label
            if rs.scale and init.scheme != "zero":
                params[f"{role}.scale"] = init.scale
        return params

    def baselines(self) -> dict[str, Recipe]:
        """The named baselines restricted to this space's roles (other roles stay default)."""
        return {name: Recipe({r: i for r, i in b.roles.items() if r in self.roles}, name,
                             self.role_overrides)
                for name, b in BASELINES.items()}


def available_spaces() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SPACES_DIR.glob("*.yaml"))}


def load_space(name_or_path: str) -> Space:
    """Load a space by name (a file in ``spaces/``) or by path, validating it against the schema."""
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
    return parse_space(raw, path.stem, where=str(path))


def parse_space(raw: Any, name: str, where: str) -> Space:
    def bad(msg: str) -> UsageError:
        return UsageError(f"space file {where}: {msg}")

    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise bad(f"missing 'format: {FORMAT}' at the top")
    if raw.get("version") != VERSION:
        raise bad(f"version {raw.get('version')!r} is not supported; use version: {VERSION}")
    extra = set(raw) - {"format", "version", "description", "roles", "role_overrides"}
    if extra:
        raise bad(f"unknown key(s) {sorted(extra)}; allowed: description, roles, role_overrides")
    if not isinstance(raw.get("roles"), dict) or not raw["roles"]:
        raise bad("'roles' must map at least one role to {init: [...], scale: [lo, hi]}")
    roles = {}
    for role, spec in raw["roles"].items():
        if role not in ROLES:
            raise bad(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if not isinstance(spec, dict) or set(spec) - {"init", "scale"} or not spec.get("init"):
            raise bad(f"roles.{role} must be {{init: [choices...], scale: [lo, hi]}}")
        choices = []
        for c in spec["init"]:
            try:
                if isinstance(c, str):
                    choices.append(RoleInit(c))
                elif isinstance(c, dict) and "scheme" in c:
                    choices.append(RoleInit(c["scheme"], {k: v for k, v in c.items() if k != "scheme"}))
                else:
                    raise UsageError(f"choice {c!r} must be a scheme name or {{scheme: ..., option: ...}}")
                Recipe({role: choices[-1]})  # checks the scheme applies to this role
            except UsageError as exc:
                raise bad(f"roles.{role}.init: {exc}") from None
        scale = spec.get("scale")
        if scale is not None:
            if (not isinstance(scale, list) or len(scale) != 2
                    or not all(isinstance(v, (int, float)) for v in scale)
                    or not 0 < scale[0] <= 1.0 <= scale[1]):
                raise bad(f"roles.{role}.scale must be [lo, hi] with 0 < lo <= 1 <= hi "
                          f"(1 must be inside so the baselines can run), not {scale!r}")
            scale = (float(scale[0]), float(scale[1]))
        roles[role] = RoleSpace(tuple(choices), scale)
    overrides = raw.get("role_overrides") or {}
    if not isinstance(overrides, dict) or not all(v in ROLES for v in overrides.values()):
        raise bad(f"role_overrides must map module-path globs to roles ({', '.join(ROLES)})")
    space = Space(name, roles, raw.get("description", ""), overrides)
    for baseline in space.baselines().values():
        try:
            space.params_for(baseline)
        except UsageError as exc:
            raise bad(str(exc)) from None
    return space
