"""Recipe: which scheme (with options) and which scale each layer role gets; applies to any model.

A recipe file is YAML (or JSON, by extension), versioned, and never pickled::

    format: initsearch.recipe
    version: 1
    name: lion_dg
    roles:
      stem:     {scheme: he, options: {mode: fan_in}, scale: 1.0}
      aux_head: {scheme: zero}
    role_overrides: {}      # optional {module-path glob: role}, passed to role discovery
    meta: {}                # free-form provenance (study, trial, val_acc, ...)

Roles the recipe does not name keep PyTorch's default init.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import ROLES, WEIGHT_ROLES, discover_roles, parameterized_modules
from initsearch.schemes import SCHEMES, scale_

FORMAT, VERSION = "initsearch.recipe", 1


@dataclass(frozen=True)
class RoleInit:
    """The init of one role: ``scheme(**options)`` then ``weight *= scale``."""

    scheme: str = "default"
    options: Mapping[str, str] = field(default_factory=dict)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise UsageError(f"unknown init scheme {self.scheme!r}; use one of: {', '.join(SCHEMES)}")
        problem = SCHEMES[self.scheme].check_options(dict(self.options))
        if problem:
            raise UsageError(problem)
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise UsageError(f"scale must be a positive number, not {self.scale!r}")

    @property
    def label(self) -> str:
        """``he`` or ``he:mode=fan_out`` -- the choice without its scale (a search-space value)."""
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.scheme}:{opts}" if opts else self.scheme

    @classmethod
    def from_label(cls, label: str, scale: float = 1.0) -> "RoleInit":
        scheme, _, opts = label.partition(":")
        options = dict(kv.split("=", 1) for kv in opts.split(",")) if opts else {}
        return cls(scheme, options, scale)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme}
        if self.options:
            out["options"] = dict(self.options)
        if self.scale != 1.0:
            out["scale"] = float(self.scale)
        return out


@dataclass(frozen=True)
class Recipe:
    """A per-role init recipe.

    Example:
        >>> from initsearch.archs import build_model
        >>> model = build_model("resnet_ds", options={"depth": 8})
        >>> plan = BASELINES["lion_dg"].apply(model, seed=0)
        >>> float(model.aux_heads["stage1"].weight.abs().sum())
        0.0
    """

    roles: Mapping[str, RoleInit] = field(default_factory=dict)
    name: str = ""
    role_overrides: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise UsageError(f"unknown role(s) {sorted(unknown)} in recipe; roles: {', '.join(ROLES)}")
        norm = self.roles.get("norm")
        if norm and SCHEMES[norm.scheme].weight_layers_only:
            raise UsageError(f"scheme {norm.scheme!r} does not apply to role 'norm'; "
                             "use default or zero")

    def plan(self, model: nn.Module) -> list[dict[str, Any]]:
        """Per-layer details: path, type, shape, role, scheme, options, scale -- without applying."""
        roles = discover_roles(model, self.role_overrides)
        modules = parameterized_modules(model)
        rows = []
        for path, role in roles.items():
            module, init = modules[path], self.roles.get(role, RoleInit())
            rows.append({"path": path, "type": type(module).__name__,
                         "shape": list(getattr(module, "weight", next(module.parameters())).shape),
                         "role": role, **init.to_dict()})
        return rows

    def apply(self, model: nn.Module, data: torch.Tensor | None = None,
              seed: int | None = None) -> list[dict[str, Any]]:
        """Initialize ``model`` in place; return the per-layer plan that was applied.

        Args:
            model: any ``nn.Module``; its layers are labelled by :func:`discover_roles`.
            data: a batch of standardized inputs, for data-dependent schemes. The schemes
                available now are all static and ignore it.
            seed: if given, the init draws from a private RNG stream seeded with it, so the
                same recipe, model and seed give bit-identical weights (the global RNG is
                left as it was).
        """
        del data  # no data-dependent scheme yet
        plan = self.plan(model)
        modules = parameterized_modules(model)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for row in plan:
                module, init = modules[row["path"]], self.roles.get(row["role"], RoleInit())
                if not SCHEMES[init.scheme].applies_to(module):
                    raise UsageError(f"scheme {init.scheme!r} cannot initialize {row['path']} "
                                     f"({row['type']}, role {row['role']}); choose another scheme")
                SCHEMES[init.scheme].fn(module, **init.options)
                scale_(module, init.scale)
        return plan

    def summary(self) -> str:
        """One line: ``stem=he x1.3 conv=orthogonal ...`` (roles left at default are omitted)."""
        parts = [f"{role}={init.label}" + (f"x{init.scale:.2g}" if init.scale != 1.0 else "")
                 for role, init in self.roles.items() if init != RoleInit()]
        return " ".join(parts) or "all default"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "name": self.name,
                "roles": {r: i.to_dict() for r, i in self.roles.items()},
                "role_overrides": dict(self.role_overrides), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "recipe") -> "Recipe":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise UsageError(f"{where} is not an initsearch recipe (format: {FORMAT} missing)")
        if d.get("version") != VERSION:
            raise UsageError(f"{where} has recipe version {d.get('version')!r}; this initsearch "
                             f"reads version {VERSION}")
        try:
            roles = {r: RoleInit(i.get("scheme", "default"), i.get("options", {}), i.get("scale", 1.0))
                     for r, i in (d.get("roles") or {}).items()}
        except (AttributeError, TypeError):
            raise UsageError(f"{where}: each role must map to {{scheme, options, scale}}") from None
        return cls(roles, d.get("name", ""), d.get("role_overrides") or {}, d.get("meta") or {})

    def dumps(self, fmt: str = "yaml") -> str:
        """The recipe file's text, ``"yaml"`` or ``"json"``."""
        d = self.to_dict()
        return json.dumps(d, indent=2) if fmt == "json" else yaml.safe_dump(d, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the recipe as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dumps("json" if path.suffix == ".json" else "yaml"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read recipe {path}: {exc}".splitlines()[0]) from None
        return cls.from_dict(d, where=str(path))


def _he_everywhere(**extra: RoleInit) -> dict[str, RoleInit]:
    return {**{r: RoleInit("he") for r in WEIGHT_ROLES}, **extra}


#: Named baselines that every search evaluates first, on the same protocol and seeds.
#:
#: * ``pytorch_default`` -- every layer keeps PyTorch's ``reset_parameters``.
#: * ``he`` -- He-normal, fan_in, biases 0 on every conv/linear, BN gamma=1/beta=0.
#: * ``lion_dg`` -- LION-DG (Kim 2026, arXiv 2601.02105): the ``he`` backbone with every
#:   auxiliary head's weight *and* bias exactly 0. For a head ``y = W h + b`` the gradient it
#:   sends into the backbone is ``W^T dL/dy = 0`` at step 0, while its own gradient
#:   ``(softmax(y) - onehot) h^T`` is non-zero, so the auxiliary signal phases in as ``W`` grows.
#:   Only the auxiliary heads differ from ``he``, so the pair isolates the method.
BASELINES: dict[str, Recipe] = {
    "pytorch_default": Recipe({}, "pytorch_default"),
    "he": Recipe(_he_everywhere(), "he"),
    "lion_dg": Recipe(_he_everywhere(aux_head=RoleInit("zero")), "lion_dg"),
}
