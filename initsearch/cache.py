"""The result cache: a trial already trained is read back from the MLflow store, not trained again.

A trial's result is fixed by what it trained (the model's structure, the recipe's content), how
(the protocol's content, seeds included, and the device type), on what (the data's
fingerprint) and with which code (initsearch's sources, the torch version). :meth:`ResultCache.key`
hashes all of it; every trial's MLflow run carries its key as tag ``cache_key``. Before a trial
starts, the driver looks the key up among the experiment's finished runs -- any study's -- and
hands the trial the epochs found (:attr:`initsearch.trial.TrialConfig.cached`): the trial replays
them and trains only if the pruner asks for more than the source run trained. A run fed from
the cache is tagged ``cached_from`` (the source run) and shown as ``cached``; its per-epoch
metrics, seconds included, are the source's. Only COMPLETE and PRUNED runs that trained for
themselves serve; failed, killed and cached runs never do.

Keys are exact: any change to the model, recipe, protocol, data, initsearch's code or torch
gives another key, so a stale result is never served (and editing initsearch empties the cache
in effect). ``--no-cache`` (:attr:`initsearch.RunConfig.cache`) trains everything again; the
new runs still carry keys.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from initsearch.protocol import Protocol, resolve_device
from initsearch.trial import METRICS

KEY_TAG = "cache_key"        #: the trial's cache key, on every trial run
SOURCE_TAG = "cached_from"   #: on a run fed from the cache: the run that trained it
_SERVES = ("COMPLETE", "PRUNED")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's structure: its ``repr`` (layers and their hyperparameters), the
    name, shape and dtype of every parameter and buffer, and the source of every module class
    that is not torch's (where ``forward`` says how the layers connect). Works the same for
    built-in architectures and users' models."""
    digest = hashlib.sha256(repr(model).encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        if not cls.__module__.startswith("torch."):
            try:
                digest.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):  # defined in a REPL or a notebook: its name alone
                pass
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of initsearch's own sources (every ``.py`` file of the package) and torch's
    version: a change to a scheme, the trial loop or torch is a change of result."""
    digest = hashlib.sha256(torch.__version__.encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class ResultCache:
    """Keys trials and finds their results in one MLflow experiment (a tracker's).

    Args:
        tracker: the search's :class:`~initsearch.tracking.Tracker` (its client and experiment).
        model: the model's :func:`model_fingerprint`.
        data: the splits' fingerprint (:attr:`initsearch.data.Splits.fingerprint`).
        reuse: look results up (False: ``--no-cache``; runs are still keyed).
    """

    def __init__(self, tracker, model: str, data: str, reuse: bool = True) -> None:
        self.tracker, self.reuse = tracker, reuse
        self.context = {"model": model, "data": data, "code": code_fingerprint()}
        self.hits = 0
        self._found: dict[str, tuple[str, list[dict[str, float]]]] = {}  # a run, once found, stays

    def key(self, recipe: dict[str, Any], protocol: dict[str, Any]) -> str:
        """The cache key of training ``recipe`` (as a dict; its name, meta and evidence left
        out) under ``protocol`` (as a dict; seeds included) on this model, data and code."""
        p = Protocol.from_dict(protocol)
        device = resolve_device(p.device)
        body = {"recipe": {k: v for k, v in recipe.items() if k not in ("name", "meta", "evidence")},
                "protocol": p.content_hash(), "device": device.type, **self.context}
        if device.type == "cuda":  # another GPU computes other roundings
            body["gpu"] = torch.cuda.get_device_name(device)
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def lookup(self, key: str) -> tuple[str, list[dict[str, float]]] | None:
        """:meth:`find`, counted in :attr:`hits` when found (a trial about to replay it)."""
        hit = self.find(key)
        self.hits += hit is not None
        return hit

    def find(self, key: str) -> tuple[str, list[dict[str, float]]] | None:
        """The run that trained ``key`` longest and its epochs (``[{epoch, val_acc, ...}, ...]``,
        epochs 1..k), or None: not found, reuse off, or the store unreachable (then the trial
        simply trains)."""
        if not self.reuse or self.tracker.pending:  # an outage: do not wait on the store
            return None
        if key in self._found:  # replay checked it before the trial asks for it
            return self._found[key]
        from mlflow.exceptions import MlflowException

        from initsearch.tracking import fail_fast

        client = self.tracker.client
        try:
            with fail_fast():
                runs = client.search_runs(
                    [self.tracker.experiment_id],
                    f"tags.{KEY_TAG} = '{key}' and attributes.status = 'FINISHED'", max_results=100)
                runs = sorted((r for r in runs if r.data.tags.get("state") in _SERVES
                               and SOURCE_TAG not in r.data.tags),
                              key=lambda r: -int(r.data.tags.get("epochs", 0)))
                for run in runs:
                    epochs = _epochs(client, run)
                    if epochs:
                        self._found[key] = (run.info.run_id, epochs)
                        return self._found[key]
        except (MlflowException, OSError):
            return None
        return None


def _epochs(client, run) -> list[dict[str, float]]:
    """The run's metrics per epoch, 1..``tags.epochs``; empty if any epoch lacks a score."""
    n = int(run.data.tags.get("epochs", 0))
    rows: dict[int, dict[str, float]] = {e: {"epoch": e} for e in range(1, n + 1)}
    for name in METRICS:
        if name in ("epoch", "retrain_seconds"):  # a replay spends no seconds: not needed
            continue
        for m in client.get_metric_history(run.info.run_id, name):
            if m.step in rows:
                rows[m.step][name] = m.value
    ok = n > 0 and all("val_acc" in r and "train_loss" in r and "val_loss" in r for r in rows.values())
    return [rows[e] for e in range(1, n + 1)] if ok else []
