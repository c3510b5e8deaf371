"""Tracking: one MLflow parent run per search, one nested child run per trial, all from the driver.

Only the driver process writes (sqlite allows one writer; trials run elsewhere under Ray), and
it writes in batches: one ``log_batch`` per epoch report, about 10x cheaper than a
``log_metric`` call per value. The store defaults to ``sqlite:///<home>/mlruns/mlflow.db`` with
artifacts under ``<home>/mlruns/artifacts`` -- absolute paths, since Ray trials run in their own
working directories.

A child run holds the recipe's per-role choices as params, the per-layer plan as
``recipe.json``, and ``train_loss``/``val_loss``/``val_acc`` per epoch; tag ``state`` says
COMPLETE, PRUNED or FAIL, tags ``arch`` and ``arch_options`` the model it trained. The parent
holds the search settings (architecture options included), the effective protocol
(``protocol.yaml``), the recommendation and the comparison table.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from initsearch.errors import UsageError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlruns' / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before anything is written, if the store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            ok = requests.get(uri.rstrip("/") + "/health", timeout=5).ok
        except requests.RequestException:
            ok = False
        if not ok:
            raise UsageError(f"MLflow tracking server {uri} is unreachable; start it (initsearch ui) "
                             "or pass --tracking-uri sqlite:////abs/path/mlflow.db")
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = next((p for p in (db.parent, *db.parent.parents) if p.exists()), None)
        if not db.is_absolute() or parent is None or not os.access(parent, os.W_OK):
            raise UsageError(f"tracking store {uri} is not a writable absolute sqlite path; "
                             "pass --tracking-uri sqlite:////abs/path/mlflow.db")
    elif not uri.startswith(("databricks", "postgresql", "mysql", "mssql")):
        raise UsageError(f"unsupported tracking URI {uri!r}; use sqlite:////abs/path/mlflow.db "
                         "or http://host:port of an MLflow server")


class Tracker:
    """Writes one search into MLflow through a single client (no fluent global state)."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        # after the import: MLflow sets its loggers up when imported (no "creating tables" chatter)
        logging.getLogger("mlflow").setLevel(logging.WARNING)

        self.uri = uri
        self.client = MlflowClient(uri)
        local = uri.startswith("sqlite:///")
        if local:
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment,  # a server keeps its own artifact root; a local store uses ours
                artifact_location=artifact_root.resolve().as_uri() if local and artifact_root else None)
        except (MlflowException, OSError) as exc:
            raise UsageError(f"cannot open the MLflow store {uri} ({str(exc).splitlines()[0][:200]}); "
                             "check --tracking-uri") from None
        self.parent_id: str | None = None
        self.trial_tags: dict[str, str] = {}

    # -- the search ----------------------------------------------------------------------------
    def start_search(self, study_name: str, params: dict[str, Any], protocol: dict[str, Any],
                     trial_tags: dict[str, str]) -> str:
        """Open the parent run, or reopen the one a resumed study already has. The parent keeps
        ``params`` and the effective protocol (``protocol.yaml``); every trial run is tagged
        with ``trial_tags`` (the architecture and its options, so runs filter by them)."""
        from mlflow.entities import Param, RunTag

        self.trial_tags = {"study": study_name, **trial_tags}

        found = self.client.search_runs([self.experiment_id],
                                        f"tags.study = '{study_name}' and tags.role = 'search'",
                                        max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=study_name,
                                     tags={"study": study_name, "role": "search"})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)) for k, v in params.items()],
                              tags=[RunTag("mlflow.note.content",
                                           f"initsearch study {study_name}: " + ", ".join(
                                               f"{k}={v}" for k, v in params.items()))])
        self.client.log_dict(self.parent_id, protocol, "protocol.yaml")
        return self.parent_id

    def end_search(self, metrics: dict[str, float], texts: dict[str, str], status: str,
                   figures: dict[str, Any] | None = None) -> None:
        """Close the parent run with the search's figures, text artifacts and plots
        (``{"plots/x.png": matplotlib figure}``)."""
        from mlflow.entities import Metric

        now = _ms()
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0)
                                                       for k, v in metrics.items()])
        for name, text in texts.items():
            self.client.log_text(self.parent_id, text, name)
        for name, figure in (figures or {}).items():
            self.client.log_figure(self.parent_id, figure, name)
        self.client.set_terminated(self.parent_id, status)

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The study's runs in the MLflow UI's model-training view (by default the UI opens an
        experiment in its GenAI traces view; ``workflowType=machine_learning`` switches it)."""
        return runs_url(self.experiment_id, self.trial_tags["study"], base)

    # -- the trials ----------------------------------------------------------------------------
    def start_trial(self, run_name: str, recipe, params: dict[str, Any], plan: list[dict],
                    tags: dict[str, str]) -> str:
        """Open a child run of the search: the recipe's choices as params, its per-layer plan
        as ``recipe.json``, ``tags`` (``stage`` search or confirm, trial, seed, baseline) plus
        the study's and the architecture's."""
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(
            self.experiment_id, run_name=run_name,
            tags={PARENT_TAG: self.parent_id, **tags, **self.trial_tags})
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in params.items()],
                              tags=[RunTag("recipe", recipe.summary()[:5000])])
        self.client.log_dict(run_id, {"recipe": recipe.to_dict(), "layers": plan}, "recipe.json")
        return run_id

    def log_epoch(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = _ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                               for k, v in metrics.items() if k != "epoch"])

    def end_trial(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status)


def runs_url(experiment_id: str, study: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's runs table of one study (its parent run with the trial and
    confirmation runs nested under it), in the model-training view."""
    from urllib.parse import quote

    search = quote(f"tags.study = '{study}'")
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={search}")


def _param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _ms() -> int:
    return int(time.time() * 1000)
