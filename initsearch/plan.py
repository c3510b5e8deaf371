"""A study's plan: what a search or a confirmation will run, resolved and validated once.

Every entry point that needs a model sized by a protocol -- ``initsearch run`` and ``confirm``
(:func:`plan_study`), ``initsearch roles`` and the cost measurement (:func:`resolve_model`) --
resolves it here, so "arch, profile, options -> model factory and default space" is written
once. A :class:`StudyPlan` is frozen: the model factory, the roles, the bound space, the
protocol as it will run (seeds offset, device and precision resolved, the confirmation's keys
applied), the names and the content hashes a resumed study must match. Building one raises
:class:`~initsearch.errors.UsageError` for any bad input, and writes nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.protocol import OBJECTIVES, Protocol, load_protocol, resolve_device, resolve_precision
from initsearch.roles import Roles
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.space import Space, available_spaces, load_space


@dataclass(frozen=True)
class Model:
    """A model as a study uses it: how to build one, and what to call it.

    Attributes:
        label: names studies and MLflow experiments (the arch, or the factory's name).
        factory: builds a fresh model (trials call it once per seed).
        options: the architecture options applied: the protocol's sizes, then the user's
            (empty for a ``model_fn``).
        default_space: the space a study uses unless told: ``<arch>`` where one exists.
    """

    label: str
    factory: Callable[[], nn.Module]
    options: dict[str, Any]
    default_space: str

    @functools.cached_property
    def probe(self) -> nn.Module:
        """One instance, built once, to label layers and fingerprint the model.

        Raises:
            UsageError: the factory fails or returns no ``nn.Module``.
        """
        try:
            model = self.factory()
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"building the model failed ({type(exc).__name__}: {exc}); "
                             "check the architecture options or the model factory") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"the model factory returned {type(model).__name__}, not an nn.Module")
        return model


def resolve_model(arch: str = "resnet_ds", *, model_fn: Callable[[], nn.Module] | None = None,
                  arch_options: dict | None = None,
                  profile: str | None = None) -> tuple[Protocol, Model]:
    """The protocol ``profile`` as it applies to the model, and the model it sizes.

    ``arch`` is a built-in name or ``"package.module:function"``; ``model_fn`` (instead) a
    callable returning a fresh ``nn.Module``. A built-in arch takes the protocol's
    ``archs.<arch>`` overrides and sizes, then ``arch_options`` over them.

    Raises:
        UsageError: an unknown profile, or ``arch_options`` with a ``model_fn``.
    """
    if model_fn is not None and arch_options:
        raise UsageError("arch_options apply to a built-in arch or a 'module:function' factory; "
                         "with model_fn, bind them into it (functools.partial(factory, ...))")
    builtin = arch if model_fn is None and ":" not in arch else None
    protocol, options = load_protocol(profile).for_arch(builtin)
    if model_fn is not None:
        return protocol, Model(_label(model_fn), model_fn, {}, "default")
    options.update(arch_options or {})
    space = arch if arch in available_spaces() else "default"
    return protocol, Model(arch.rpartition(":")[2], functools.partial(build_model, arch, options=options),
                           options, space)


@dataclass(frozen=True)
class StudyPlan:
    """What one study runs: built by :func:`plan_study`, read by the search, the confirmation,
    the result cache and the tracking runs.

    Attributes:
        model: the model and its names (:class:`Model`).
        protocol: how trials train, as they will run here.
        space: the search space, bound to the model (its roles discovered once).
        dataset, data_dir: the data.
        budget: search trials (0: a confirmation with no search).
        seed: seeds TPE and offsets the protocol's training seeds.
        precision_auto: the profile said ``precision: auto``: a resumed study keeps the
            precision it began in, wherever it is resumed.
        state: ``<home>/mlruns``.
        tracking_uri: the MLflow store.
        experiment: the MLflow experiment holding the study's runs.
    """

    model: Model
    protocol: Protocol
    space: Space
    dataset: str
    data_dir: str | os.PathLike | None
    budget: int
    seed: int
    precision_auto: bool
    state: Path
    tracking_uri: str
    experiment: str

    @property
    def roles(self) -> Roles:
        return self.space.model_roles


    @property
    def settings(self) -> dict[str, Any]:
        """What names the study's set-up besides its content: a resumed study must match them."""
        return {"arch": self.model.label, "dataset": self.dataset, "profile": self.protocol.name,
                "space": self.space.name, "seed": self.seed, "arch_options": self.model.options}

    def content(self) -> dict[str, Any]:
        """What a resumed study must share with the one it continues: how trials train and are
        scored (the protocol, as applied to the model) and what they draw from (the bound space)."""
        return {"protocol_sha256": self.protocol.content_hash(), "protocol": self.protocol.to_dict(),
                "space_sha256": self.space.content_hash(), "space_content": self.space.content()}

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """How a study's recorded attributes differ from this plan, one phrase each (empty: the
        same set-up)."""
        differ = [f"{k} {stored.get(k)!r} (now {v!r})" for k, v in self.settings.items()
                  if stored.get(k) != v]
        now = self.content()
        for what, sha, body in (("protocol", "protocol_sha256", "protocol"),
                                ("space", "space_sha256", "space_content")):
            if sha in stored and stored[sha] != now[sha]:  # older studies did not record the space
                keys = sorted(k for k in {*stored.get(body, {}), *now[body]}
                              if stored.get(body, {}).get(k) != now[body].get(k))
                differ.append(f"another {what} content ({', '.join(keys) or 'sha256'} differ)")
        return differ

    def resumed(self, name: str, stored: dict[str, Any]) -> "StudyPlan":
        """This plan continuing study ``name`` (its recorded attributes ``stored``): in the
        precision it began in when the profile says ``auto``.

        Raises:
            UsageError: the study ran with other settings, another protocol or another space
                (its trials would not be comparable); one line says what differs.
        """
        plan = self
        if self.precision_auto:
            precision = stored.get("protocol", {}).get("precision", self.protocol.precision)
            plan = dataclasses.replace(self, protocol=dataclasses.replace(self.protocol,
                                                                          precision=precision))
        differ = plan.differences(stored)
        if differ:
            raise UsageError(f"study {name!r} was run with {'; '.join(differ)}; resume it with the "
                             "same settings and files, or start a new --study")
        return plan


def plan_study(arch: str = "resnet_ds", *, model_fn: Callable[[], nn.Module] | None = None,
               arch_options: dict | None = None, dataset: str = "cifar10",
               data_dir: str | os.PathLike | None = None, budget: int, profile: str | None = None,
               space: str | None = None, seed: int = 0, objective: str | None = None,
               run: RunConfig, confirm: ConfirmConfig,
               protocol_keys: dict[str, Any] | None = None) -> StudyPlan:
    """Resolve and check a study's set-up (arguments as for :func:`initsearch.search`;
    ``protocol_keys`` replace the profile's, as a claim's setting does:
    :mod:`initsearch.claims`).

    Raises:
        UsageError: one line naming the bad input and the fix; nothing is written.
    """
    from initsearch.tracking import check_tracking_uri, default_tracking_uri  # loads MLflow: only here

    protocol, model = resolve_model(arch, model_fn=model_fn, arch_options=arch_options,
                                    profile=profile)
    protocol = dataclasses.replace(protocol, seeds=tuple(s + seed for s in protocol.seeds),
                                   **(protocol_keys or {}), **parse_objective(objective, protocol))
    if run.gpus_per_trial is not None:
        protocol = dataclasses.replace(protocol, gpus_per_trial=run.gpus_per_trial)
    if protocol.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"profile {protocol.name!r} trains on CUDA but no GPU is visible; "
                         "use --profile cpu")
    if protocol.gpus_per_trial > 0 and not torch.cuda.is_available():
        raise UsageError(f"gpus_per_trial={protocol.gpus_per_trial} but no CUDA GPU is visible; "
                         "use --gpus-per-trial 0 or a machine with a GPU")
    auto = protocol.precision == "auto"
    # what will run is what is hashed and recorded: the cache and resume tell bf16 from fp32
    protocol = dataclasses.replace(protocol, precision=resolve_precision(
        protocol.precision, resolve_device(protocol.device)))
    protocol = confirm.over(protocol)
    if not budget and not protocol.confirm_seeds:  # before the model and the data are loaded
        raise UsageError("a confirmation without seeds confirms nothing; drop --confirm-seeds 0")
    bound = load_space(space or model.default_space).bind(model.probe)  # labels every layer, or fails
    tracking_uri = (run.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                    or default_tracking_uri(run.state.parent))
    check_tracking_uri(tracking_uri)
    return StudyPlan(model, protocol, bound, dataset, data_dir, budget, seed, auto, run.state,
                     tracking_uri, run.experiment or f"initsearch-{model.label}")


def parse_objective(text: str | None, protocol: Protocol) -> dict[str, Any]:
    """``"final"``, ``"auc"`` or ``"epochs_to:0.4"`` as protocol keys (None: the profile's).

    Raises:
        UsageError: an unknown objective, or a target that is no accuracy in (0, 1).
    """
    if text is None:
        return {}
    name, _, target = text.partition(":")
    if name not in OBJECTIVES or (name == "epochs_to") != bool(target):
        raise UsageError(f"objective {text!r} must be final, auc or epochs_to:TARGET (an accuracy, "
                         "e.g. epochs_to:0.4)")
    if not target:
        return {"objective": name, "objective_target": None}
    try:
        value = float(target)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise UsageError(f"objective {text!r}: the target must be an accuracy in (0, 1), e.g. 0.4")
    return {"objective": name, "objective_target": value}


def _label(model_fn: Callable[[], nn.Module]) -> str:
    """A name for studies and experiments: the factory's name (through partials), lambdas and
    odd characters dropped."""
    while isinstance(model_fn, functools.partial):
        model_fn = model_fn.func
    name = re.sub(r"[^A-Za-z0-9._-]", "", getattr(model_fn, "__name__", ""))
    return name or "model"
