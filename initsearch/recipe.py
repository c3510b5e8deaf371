"""Recipe: the scheme and scale of each layer role, per-layer scales, then network-level steps.

A recipe file is YAML (or JSON, by extension), versioned, and never pickled::

    format: initsearch.recipe
    version: 1
    name: lsuv_lion_dg
    roles:
      stem:     {scheme: orthogonal, scale: 1.0}
      aux_head: {scheme: zero}
    layer_scales: {stages.0.0.conv1: 1.3}   # optional per-layer multipliers (module path: factor)
    steps:                                  # optional network-level steps, run in this order
      - {name: lsuv, options: {tol: 0.1}}
    role_overrides: {}      # optional {module-path glob: role}, passed to role discovery
    meta: {}                # free-form provenance (study, trial, search_val_acc, ...)
    evidence: {}            # optional: the confirmation behind a recommendation (see below)

A recommended recipe carries its ``evidence``: the study, architecture and options, protocol
name and content hash, the confirmation seeds, every confirmed recipe's mean and 95 % CI and
paired differences, and the verdict (:mod:`initsearch.recommend`). It is provenance only:
:meth:`Recipe.apply` ignores it.

:meth:`Recipe.apply` runs, in this order: (1) each role's layer scheme; (2) the static steps
(Fixup, emergence, RISOTTO: they read the network's structure); (3) the role scale times the
layer scale, as weight multipliers; (4) the data-dependent steps (LSUV, GradInit), which must
come last so they see -- and correct -- the final static init. Roles the recipe does not name
keep PyTorch's default init.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from initsearch.data import EXAMPLE_INPUT
from initsearch.errors import UsageError
from initsearch.roles import ROLES, WEIGHT_ROLES, Roles, discover_roles, matrices, units
from initsearch.roles.units import shape
from initsearch.schemes import SCHEMES, STEPS, InitData, fixup, identity, scale_

FORMAT, VERSION = "initsearch.recipe", 1


def _label(name: str, options: Mapping[str, Any]) -> str:
    """``name`` or ``name:key=value,...`` (sorted): a choice as one search-space string."""
    opts = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{name}:{opts}" if opts else name


def _short(value: Any) -> Any:
    """A searched float as a reader wants it (``1.38`` for ``1.3826900504353046``)."""
    return f"{value:.3g}" if isinstance(value, float) else value


def _parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """The inverse of :func:`_label`; values are read as YAML scalars (``0.1`` is a float)."""
    name, _, opts = label.partition(":")
    return name, {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in opts.split(",") if kv)}


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
        return _label(self.scheme, self.options)

    @classmethod
    def from_label(cls, label: str, scale: float = 1.0) -> "RoleInit":
        return cls(*_parse_label(label), scale)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme}
        if self.options:
            out["options"] = dict(self.options)
        if self.scale != 1.0:
            out["scale"] = float(self.scale)
        return out


@dataclass(frozen=True)
class StepInit:
    """One network-level step of a recipe: ``STEPS[name](model, roles, data, **options)``."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in STEPS:
            raise UsageError(f"unknown init step {self.name!r}; use one of: {', '.join(STEPS)}")
        problem = STEPS[self.name].check_options(dict(self.options))
        if problem:
            raise UsageError(problem)

    @property
    def needs_data(self) -> bool:
        return STEPS[self.name].needs_data

    @property
    def label(self) -> str:
        """``lsuv`` or ``lsuv:tol=0.05`` (a search-space value)."""
        return _label(self.name, self.options)

    @classmethod
    def from_label(cls, label: str, **extra: Any) -> "StepInit":
        name, options = _parse_label(label)
        return cls(name, {**options, **extra})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **({"options": dict(self.options)} if self.options else {})}


@dataclass(frozen=True)
class InitReport:
    """What :meth:`Recipe.apply` did: the per-unit plan, each step's report, the wall time, and
    the model's roles (pass them on instead of discovering them again)."""

    plan: list[dict[str, Any]]
    steps: dict[str, dict[str, Any]]
    seconds: float
    roles: Roles | None = None

    @property
    def forward_passes(self) -> int:
        return sum(r.get("forward_passes", 0) for r in self.steps.values())

    @property
    def backward_passes(self) -> int:
        return sum(r.get("backward_passes", 0) for r in self.steps.values())


_SCALAR_ROLES = tuple(r for r in ROLES if r not in WEIGHT_ROLES)  # norm affines and scalars


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
    steps: tuple[StepInit, ...] = ()
    layer_scales: Mapping[str, float] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise UsageError(f"unknown role(s) {sorted(unknown)} in recipe; roles: {', '.join(ROLES)}")
        for role in _SCALAR_ROLES:
            init = self.roles.get(role)
            if init and SCHEMES[init.scheme].weight_layers_only:
                raise UsageError(f"scheme {init.scheme!r} does not apply to role {role!r}; "
                                 "use default, zero or normal")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise UsageError(f"recipe lists an init step twice ({', '.join(names)}); list each once")
        kinds = [s.needs_data for s in self.steps]
        if kinds != sorted(kinds):
            raise UsageError(f"recipe steps {names}: data-dependent steps (lsuv, gradinit) must come "
                             "after the static ones (fixup, emergence, risotto); reorder them")
        bad = {p: v for p, v in self.layer_scales.items()
               if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise UsageError(f"layer_scales must be positive numbers, not {bad}")

    def plan(self, model: nn.Module, roles: Roles | None = None) -> list[dict[str, Any]]:
        """Per-unit details: path, type, shape, role, scheme, options, scale (role x layer) --
        without applying. Steps are not part of the plan: they act on the whole network.
        ``roles`` (the model's, with this recipe's overrides) saves discovering them again."""
        roles = roles if roles is not None else discover_roles(model, self.role_overrides)
        missing = sorted(set(self.layer_scales) - set(roles))
        if missing:
            raise UsageError(f"recipe {self.name!r} scales layer(s) {', '.join(missing)} that the model "
                             "lacks; the recipe was made for another architecture")
        found = units(model)
        rows = []
        for path, role in roles.items():
            unit, init = found[path], self.roles.get(role, RoleInit())
            row = {"path": path, "type": type(unit).__name__, "shape": shape(unit),
                   "role": role, **init.to_dict()}
            if path in self.layer_scales:
                row["scale"] = init.scale * self.layer_scales[path]
            rows.append(row)
        return rows

    def apply(self, model: nn.Module, data: InitData | None = None,
              seed: int | None = None, roles: Roles | None = None) -> InitReport:
        """Initialize ``model`` in place (see the module docstring for the order of operations).

        Args:
            model: any ``nn.Module``; its layers are labelled by :func:`discover_roles`.
            data: training data for the data-dependent steps (LSUV, GradInit); required when
                the recipe has one, ignored otherwise.
            seed: if given, the init draws from a private RNG stream seeded with it, so the
                same recipe, model and seed give bit-identical weights (the global RNG is
                left as it was).
            roles: the model's roles under this recipe's overrides, if already discovered
                (discovery traces the model; a search discovers once per model).

        Returns:
            An :class:`InitReport`: the per-unit plan, each step's report, the seconds taken,
            the roles.
        """
        t0 = time.perf_counter()
        roles = roles if roles is not None else discover_roles(model, self.role_overrides)
        plan = self.plan(model, roles)
        needs_data = [s.name for s in self.steps if s.needs_data]
        if needs_data and data is None:
            raise UsageError(f"recipe {self.name!r} runs {', '.join(needs_data)}, which need data: "
                             "pass data=InitData(x, y) to Recipe.apply")
        found = units(model)
        reports: dict[str, dict[str, Any]] = {}
        with torch.random.fork_rng(devices=_devices(model), enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for row in plan:
                unit, init = found[row["path"]], self.roles.get(row["role"], RoleInit())
                scheme = SCHEMES[init.scheme]
                if not scheme.applies_to(unit):
                    raise UsageError(f"scheme {init.scheme!r} cannot initialize {row['path']} "
                                     f"({row['type']}, role {row['role']}); choose another scheme")
                # a packed q/k/v projection is three matrices, each with its own fan; PyTorch's
                # default acts on the whole layer
                for part in [unit] if scheme.name == "default" else matrices(unit, row["role"]):
                    scheme.fn(part, **init.options)
            for step in self.steps:
                if not step.needs_data:
                    reports[step.name] = STEPS[step.name](model, roles, None, **step.options)
            for row in plan:
                scale_(found[row["path"]], row.get("scale", 1.0))
            for step in self.steps:
                if step.needs_data:
                    reports[step.name] = STEPS[step.name](model, roles, data, **step.options)
        return InitReport(plan, reports, time.perf_counter() - t0, roles)

    def summary(self) -> str:
        """One line: ``stem=he x1.3 conv=orthogonal ...`` (roles left at default are omitted)."""
        parts = [f"{role}={init.label}" + (f"x{init.scale:.2g}" if init.scale != 1.0 else "")
                 for role, init in self.roles.items() if init != RoleInit()]
        if self.layer_scales:
            parts.append(f"+{len(self.layer_scales)} layer scales")
        parts += [f"then {_label(s.name, {k: _short(v) for k, v in s.options.items()})}"
                  for s in self.steps]
        return " ".join(parts) or "all default"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "name": self.name,
                "roles": {r: i.to_dict() for r, i in self.roles.items()},
                "layer_scales": {p: float(v) for p, v in self.layer_scales.items()},
                "steps": [s.to_dict() for s in self.steps],
                "role_overrides": dict(self.role_overrides), "meta": dict(self.meta),
                **({"evidence": dict(self.evidence)} if self.evidence else {})}

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
        try:
            steps = tuple(StepInit(st["name"], st.get("options") or {}) for st in d.get("steps") or ())
        except (KeyError, AttributeError, TypeError):
            raise UsageError(f"{where}: each step must be {{name: ..., options: {{...}}}}") from None
        layer_scales = d.get("layer_scales") or {}
        if not isinstance(layer_scales, Mapping):
            raise UsageError(f"{where}: layer_scales must map module paths to numbers")
        evidence = d.get("evidence") or {}
        if not isinstance(evidence, Mapping):
            raise UsageError(f"{where}: evidence must be a mapping (it is written by initsearch)")
        return cls(roles, d.get("name", ""), d.get("role_overrides") or {}, d.get("meta") or {},
                   steps, layer_scales, evidence)

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


def _devices(model: nn.Module) -> list[int]:
    """CUDA devices the model lives on, so a seeded init is private on them too."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _he_everywhere(**extra: RoleInit) -> dict[str, RoleInit]:
    return {**{r: RoleInit("he") for r in WEIGHT_ROLES}, **extra}


def _roles(table: Mapping[str, tuple[str, Mapping[str, str]]]) -> dict[str, RoleInit]:
    return {role: RoleInit(scheme, options) for role, (scheme, options) in table.items()}


_ORTHO = {r: RoleInit("orthogonal") for r in WEIGHT_ROLES}  # LSUV's orthonormal pre-init


#: The published recipes, one line each (``initsearch schemes`` lists them). More on each:
#:
#: * LION-DG: for an auxiliary classifier ``y = W h + b`` with ``W = 0`` and ``b = 0`` the
#:   gradient it sends back is ``W^T dL/dy = 0`` at step 0 -- into the backbone and into the
#:   head's own earlier layers -- while its own gradient ``(softmax(y) - onehot) h^T`` is not, so
#:   the auxiliary signal phases in as ``W`` grows. Only the auxiliary classifiers differ from
#:   ``he``, so the pair isolates the method.
#: * ``lsuv_lion_dg``: LSUV skips all-zero layers, so zeroing the heads first gives the paper's
#:   "LSUV first, then zero the heads".
#: * ``gradinit``: the authors' starting point (He-normal fan_out convs, PyTorch-default
#:   linears), then their setting for the network's family; the cheap ``gradinit_fast`` step is a
#:   search choice, never a baseline.
ABOUT: dict[str, str] = {
    "pytorch_default": "every layer keeps PyTorch's reset_parameters; the reference of every verdict",
    "he": "He-normal fan_in on every conv/linear, biases 0, norms weight 1 / bias 0 (He et al. 2015)",
    "lion_dg": "LION-DG (Kim 2026): He backbone, the last layer of every auxiliary head zero "
               "(weight and bias)",
    "lsuv": "LSUV (Mishkin & Matas 2016): orthonormal, then layer-sequential unit variance on a batch",
    "lsuv_lion_dg": "LION-DG's hybrid: orthonormal with zero auxiliary classifiers, then LSUV",
    "gradinit": "GradInit (Zhu et al. 2021): He fan_out, then per-tensor scales learned for one "
                "epoch at the paper's setting for the family",
    "emergence": "He, then the emergence-promoting alpha^n depth profile (Li et al. 2024)",
    "zerO": "ZerO (Zhao et al. 2022): identity/Hadamard layers, every branch's last layer and "
            "the classifiers zero",
    "risotto": "RISOTTO (Gadhikar & Burkholz 2022): looks-linear orthogonal ResNet with an exactly "
               "isometric input-output Jacobian",
    "fixup": "Fixup (Zhang et al. 2019): branch ends and classifier zero, L^(-1/(2m-2)) inside "
             "branches; needs a normalization-free ResNet",
    "skipinit": "SkipInit (De & Smith 2020): He, every branch multiplier 0; needs a "
                "normalization-free ResNet",
    "gpt2": "GPT-2 (Radford et al. 2019): every weight and position embedding N(0, 0.02^2), then "
            "each residual branch's last layer x 1/sqrt(N); transformers",
    "tfixup": "T-Fixup (Huang et al. 2020): Xavier, v/out/MLP x 0.67 N^(-1/4), embedding for a "
              "(9N)^(-1/4) stream; transformers without LayerNorm",
    "mimetic": "mimetic attention (Trockman & Kolter 2023): PyTorch's default elsewhere, "
               "W_q^T W_k ~ 0.7 Z + 0.7 I and W_O W_V = 0.4 Z - 0.4 I per attention",
}

#: Published schemes that every search evaluates first, on the same protocol and seeds (those
#: the space can express and that apply to the model; see :func:`why_not`).
BASELINES: dict[str, Recipe] = {r.name: r for r in (
    Recipe({}, "pytorch_default"),
    Recipe(_he_everywhere(), "he"),
    Recipe(_he_everywhere(aux_head=RoleInit("zero")), "lion_dg"),
    Recipe(_ORTHO, "lsuv", steps=(StepInit("lsuv"),)),
    Recipe({**_ORTHO, "aux_head": RoleInit("zero")}, "lsuv_lion_dg", steps=(StepInit("lsuv"),)),
    Recipe({r: RoleInit("he", {"mode": "fan_out"}) for r in ("stem", "conv", "branch_last", "shortcut")},
           "gradinit", steps=(StepInit("gradinit"),)),
    Recipe(_he_everywhere(), "emergence", steps=(StepInit("emergence"),)),
    Recipe(_roles(identity.ZERO_ROLES), "zerO"),
    Recipe(_he_everywhere(), "risotto", steps=(StepInit("risotto"),)),
    Recipe(_roles(fixup.FIXUP_ROLES), "fixup", steps=(StepInit("fixup"),)),
    Recipe(_roles(fixup.SKIPINIT_ROLES), "skipinit"),
    Recipe({r: RoleInit("normal") for r in ("embedding", "pos_embedding", "attn_qkv", "attn_q",
                                            "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out",
                                            "linear", "classifier")},
           "gpt2", steps=(StepInit("gpt2"),)),
    Recipe({}, "tfixup", steps=(StepInit("tfixup"),)),
    Recipe({}, "mimetic", steps=(StepInit("mimetic"),)),
)}

#: Roles a baseline needs in the model to mean anything (else it is skipped, not run).
_REQUIRES = {"lion_dg": {"aux_head"}, "lsuv_lion_dg": {"aux_head"}, "risotto": {"branch_last"},
             "fixup": {"branch_last", "branch_scale", "scalar_bias"},
             "skipinit": {"branch_last", "branch_scale"}, "gpt2": {"attn_out"},
             "tfixup": {"attn_out"}, "mimetic": {"attn_out"}}
#: A baseline published for some network families only: ``{topology: roles it needs there}``.
#: ZerO maps ResNets (each branch's last layer zero) and plain networks (every layer identity
#: or Hadamard: the official MLP notebook, and the paper's deep plain networks); its
#: transformer mapping (W_Q = I, W_K = W_V = 0) is not built, and it has none for DenseNets.
_FAMILIES = {"zerO": {"residual": {"branch_last"}, "plain": set()}}


def why_not(baseline: str, model: nn.Module, overrides: Mapping[str, str] | None = None,
            roles: Roles | None = None, input_shape: tuple[int, ...] = EXAMPLE_INPUT) -> str | None:
    """None if the baseline applies to ``model`` (its layers labelled with ``overrides``; pass
    ``roles`` if already discovered), else why not: a role it needs is missing (LION-DG needs
    auxiliary heads, Fixup and SkipInit a normalization-free ResNet with branch scalars, ...) or
    the model is of a family it has no mapping for (ZerO on a transformer or a DenseNet),
    or its layer schemes or structural step refuse the model (ZerO on an even kernel, RISOTTO
    on bottleneck blocks, Fixup on branches of unequal length, ...) or a data step cannot run
    on it (GradInit without second derivatives) -- found by applying it to a copy, data steps
    only probed on a random batch of 4 inputs of ``input_shape`` (one image's: CIFAR-10's by
    default)."""
    recipe = replace(BASELINES[baseline], role_overrides=dict(overrides or {}))
    roles = roles if roles is not None else discover_roles(model, recipe.role_overrides)
    needs = _REQUIRES.get(baseline, set())
    families = _FAMILIES.get(baseline)
    if families is not None:
        if roles.topology not in families:
            return (f"is published for {' and '.join(families)} networks, not {roles.topology} "
                    "ones")
        needs = families[roles.topology]
    missing = sorted(needs - set(roles.values()))
    if missing:
        return f"needs {', '.join(missing)} layers"
    try:
        trial = copy.deepcopy(model)
        report = replace(recipe, steps=tuple(s for s in recipe.steps if not s.needs_data)).apply(
            trial, seed=0, roles=roles)
        device = next(trial.parameters()).device
        x = torch.randn(4, *input_shape, device=device)
        for step in recipe.steps:
            if step.needs_data and STEPS[step.name].probe is not None:
                STEPS[step.name].probe(trial, roles, x)
        with torch.no_grad():
            out = trial.eval()(x)
    except UsageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 -- a scheme that cannot handle this model
        return f"fails on this model ({type(exc).__name__}: {str(exc)[:150]})"
    if not all(torch.isfinite(t).all() for t in _tensors(out)):
        factors = [row["factor"] for r in report.steps.values() for row in r.get("layers", [])
                   if "factor" in row]  # a step that scales layers says how far (emergence)
        why = (f": its factors span [{min(factors):.2g}, {max(factors):.2g}] over {len(factors)} "
               "scaled layers and compound with depth" if factors else "")
        return (f"gives a non-finite output on this model (a random batch through the initialized "
                f"copy){why}")
    return None


def _tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []
