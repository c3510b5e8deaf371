"""The runs: one MLflow parent run per search, one nested child run per trial, all from the driver.

Only the driver process writes (sqlite allows one writer; trials run elsewhere under Ray), and
it writes in batches: one ``log_batch`` per epoch report, about 10x cheaper than a
``log_metric`` call per value.

A child run holds the recipe's per-role choices as params, the recipe itself as
``recipe.json`` (a recipe file: download it and ``Recipe.load`` it), the per-layer plan as
``layers.json``, and ``train_loss``/``val_loss``/``val_acc`` per epoch; tag ``state`` says
COMPLETE, PRUNED or FAIL, tags ``arch`` and ``arch_options`` the model it trained. The parent
holds the search settings (architecture options included), the effective protocol
(``protocol.yaml``), the recommendation and the comparison table.

Every write is a plain dict (``{"op": "batch", "run": ..., ...}``) handed to the
:class:`~initsearch.tracking.queue.WriteQueue`, which writes it now or, while the store is
down, later -- so each one is self-contained (figures already rendered) and safe to repeat.
"""
from __future__ import annotations

import base64
import json
import logging
import posixpath
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from initsearch.errors import UsageError
from initsearch.tracking.outage import Outage, fail_fast, first_line, say
from initsearch.tracking.queue import WriteQueue
from initsearch.tracking.store import is_server, runs_url, ui_base

PARENT_TAG = "mlflow.parentRunId"
#: Tag of every run a Tracker opens: the placeholder id it was opened under, so a write repeated
#: after a lost answer or a killed driver finds the run instead of creating it twice.
KEY_TAG = "initsearch.key"
#: How the ids :meth:`Tracker.start_trial` returns while the store is down begin.
PLACEHOLDER = "pending-"


class Tracker:
    """Writes one search into MLflow through a single client (no fluent global state).

    Outages: a write the store cannot take for a reason that is not the write's is queued
    instead of raised (:mod:`~initsearch.tracking.outage`), and the search goes on.
    :meth:`start_trial` returns a placeholder id (``pending-...``) when the store is down; the
    run is created when it is back, and later writes that name the placeholder go to that run
    (:meth:`resolve` gives the real id once known). With ``spool`` (a JSON-lines file), the
    queue also lives on disk, so a killed driver loses nothing: the next Tracker on the same
    spool loads it, and :meth:`replay_spool` (or any write) writes it. A write that fails
    because it is wrong (MLflow's 4xx errors, a ``TypeError``) still raises."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None, *,
                 spool: Path | None = None) -> None:
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
            with fail_fast():
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                    experiment,  # a server keeps its own artifact root; a local store uses ours
                    artifact_location=artifact_root.resolve().as_uri() if local and artifact_root else None)
        except (MlflowException, OSError) as exc:
            raise UsageError(f"cannot open the MLflow store {uri} ({first_line(exc, 200)}); "
                             "check --tracking-uri") from None
        self.parent_id: str | None = None
        self.trial_tags: dict[str, str] = {}
        self.outage = Outage(uri)
        self._writes = WriteQueue(self._apply, self.outage, spool)

    # -- the queue -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Writes queued because the store was unreachable (0 when all are in the store)."""
        return len(self._writes)

    def resolve(self, run_id: str) -> str:
        """The MLflow run id behind ``run_id`` (a placeholder from :meth:`start_trial` or
        :meth:`start_search`) once that run exists; ``run_id`` itself otherwise."""
        return self._writes.runs.get(run_id, run_id)

    def flush(self) -> int:
        """Write the queue now if the store answers (ignoring the retry pace); returns the
        number of writes still pending."""
        return self._writes.flush()

    def replay_spool(self) -> int:
        """Write what an earlier Tracker on the same spool left pending (it was loaded when this
        one opened), then empty the spool; returns the number of writes still pending (kept in
        the spool when the store is still down). Runs are never created twice: each carries
        the placeholder it was opened under (tag ``initsearch.key``)."""
        return self.flush()

    # -- the search ----------------------------------------------------------------------------
    def start_search(self, study_name: str, params: dict[str, Any], protocol: dict[str, Any],
                     trial_tags: dict[str, str]) -> str:
        """Open the parent run, or reopen the one a resumed study already has. The parent keeps
        ``params`` and the effective protocol (``protocol.yaml``); every trial run is tagged
        with ``trial_tags`` (the architecture and its options, so runs filter by them)."""
        self.trial_tags = {"study": study_name, **trial_tags}
        ref = _placeholder()
        self._writes.submit([{
            "op": "open_search", "ref": ref, "experiment": self.experiment_id, "study": study_name,
            "time": _ms(), "params": [[k, str(v)] for k, v in params.items()],
            "note": f"initsearch study {study_name}: " + ", ".join(f"{k}={v}" for k, v in params.items()),
            "protocol": _render(protocol, "protocol.yaml")}])
        self.parent_id = self.resolve(ref)
        return self.parent_id

    def end_search(self, metrics: dict[str, float], texts: dict[str, str], status: str,
                   figures: dict[str, Any] | None = None) -> None:
        """Close the parent run with the search's figures, text artifacts and plots
        (``{"plots/x.png": matplotlib figure}``). If the store is still down, the writes stay
        pending (in the spool, if there is one) and one line on stderr says so."""
        now, run = _ms(), self.parent_id
        ops: list[dict[str, Any]] = []
        if metrics:
            ops.append({"op": "batch", "run": run,
                        "metrics": [[k, float(v), now, 0] for k, v in metrics.items()]})
        ops += [{"op": "text", "run": run, "path": name, "text": text} for name, text in texts.items()]
        ops += [{"op": "file", "run": run, "path": name, "data": _render_figure(figure, name)}
                for name, figure in (figures or {}).items()]
        ops.append({"op": "end", "run": run, "status": status, "time": now})
        self._writes.submit(ops, force=True)
        if self._writes:
            where = (f"kept in {self._writes.spool}; `initsearch run --resume --study "
                     f"{self.trial_tags.get('study', '<study>')}` (Tracker.replay_spool) writes them"
                     if self._writes.durable
                     else "kept in memory only, so they are lost when this process exits")
            say(f"warning: {len(self._writes)} tracking writes still pending ({self.outage.what} "
                f"{self.outage.gone}: {self.outage.reason}); {where}")

    def end_abandoned(self, study_name: str, settled: dict[str, str] | None = None) -> int:
        """End the runs of ``study_name`` that a killed driver left RUNNING (trials,
        confirmation jobs); the parent is reopened by :meth:`start_search`. Call it only when
        this driver holds the study alone. ``settled``: ``{run id: state}`` of the trials and
        jobs the study recorded as ended (the driver died between telling the study and ending
        the run): those end as the study says, FINISHED (FAILED for ``FAIL``) with their
        ``state``; the others as KILLED, ``INTERRUPTED``. Returns how many it ended."""
        settled = settled or {}
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.study = '{study_name}' and attributes.status = 'RUNNING'",
            max_results=10000)
        stale = [r.info.run_id for r in runs if r.data.tags.get("role") != "search"]
        for run_id in stale:
            state = settled.get(run_id)
            if state is None:
                self.end_trial(run_id, "KILLED", {"state": "INTERRUPTED"})
            else:
                self.end_trial(run_id, "FAILED" if state == "FAIL" else "FINISHED", {"state": state})
        return len(stale)

    def ui_url(self) -> str:
        """The study's runs in the MLflow UI that shows them: the tracking server's, or the
        local one ``initsearch ui`` starts (:func:`~initsearch.tracking.store.review_hint`
        says which to a reader)."""
        return runs_url(self.experiment_id, self.trial_tags["study"], ui_base(self.uri))

    # -- the trials ----------------------------------------------------------------------------
    def start_trial(self, run_name: str, recipe, params: dict[str, Any], plan: list[dict],
                    tags: dict[str, str]) -> str:
        """Open a child run of the search: the recipe's choices as params, the recipe as
        ``recipe.json``, its per-layer plan as ``layers.json``, ``tags`` (``stage`` search or
        confirm, trial, seed, baseline) plus the study's and the architecture's. Returns its
        run id, or a placeholder that later calls accept in its place while the store is down."""
        ref = _placeholder()
        self._writes.submit([{
            "op": "open_trial", "ref": ref, "experiment": self.experiment_id,
            "parent": self.parent_id, "name": run_name, "time": _ms(),
            "tags": {**tags, **self.trial_tags},
            "params": [[k, _param(v)] for k, v in params.items()],
            "recipe": recipe.summary()[:5000],
            "recipe_json": _render(recipe.to_dict(), "recipe.json"),
            "layers_json": _render(plan, "layers.json")}])
        return self.resolve(ref)

    def log_epoch(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        now = _ms()
        self._writes.submit([{"op": "batch", "run": run_id, "metrics": [
            [k, float(v), now, step] for k, v in metrics.items() if k != "epoch"]}])

    def end_trial(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        ops: list[dict[str, Any]] = []
        if tags:
            ops.append({"op": "batch", "run": run_id, "tags": [[k, str(v)] for k, v in tags.items()]})
        ops.append({"op": "end", "run": run_id, "status": status, "time": _ms()})
        self._writes.submit(ops)

    # -- writing one queued write ------------------------------------------------------------------
    def _apply(self, op: dict[str, Any]) -> None:
        """Write one queued operation; safe to repeat (a run is found, not created twice)."""
        from mlflow.entities import Metric, Param, RunTag

        with fail_fast():
            kind = op["op"]
            if kind == "open_search":
                return self._open_search(op)
            if kind == "open_trial":
                return self._open_trial(op)
            run = self._real(op["run"])
            if kind == "batch":
                self.client.log_batch(
                    run, metrics=[Metric(k, v, t, s) for k, v, t, s in op.get("metrics", ())],
                    params=[Param(k, v) for k, v in op.get("params", ())],
                    tags=[RunTag(k, v) for k, v in op.get("tags", ())])
            elif kind == "text":
                self.client.log_text(run, op["text"], op["path"])
            elif kind == "file":
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / Path(op["path"]).name
                    path.write_bytes(base64.b64decode(op["data"]))
                    self.client.log_artifact(run, str(path), posixpath.dirname(op["path"]) or None)
            elif kind == "end":
                self.client.set_terminated(run, op["status"], end_time=op["time"])
            else:
                raise ValueError(f"unknown tracking write {kind!r}")

    def _open_search(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        ref, study = op["ref"], op["study"]
        if ref in self._writes.reopened:
            self.client.update_run(self._writes.runs[ref], status="RUNNING")
            return
        run = self._writes.runs.get(ref) or (self._find(ref) if op.get("tried") else None)
        if run is None:
            found = self.client.search_runs([op["experiment"]],
                                            f"tags.study = '{study}' and tags.role = 'search'",
                                            max_results=1)
            if found:  # a resumed study: reopen its parent, keep its params
                run = found[0].info.run_id
                self.client.update_run(run, status="RUNNING")
                self._learn(op, run, reopened=True)
                return
            run = self.client.create_run(op["experiment"], start_time=op["time"], run_name=study,
                                         tags={"study": study, "role": "search", KEY_TAG: ref}).info.run_id
            self._learn(op, run)
        self.client.log_batch(run, params=[Param(k, v) for k, v in op["params"]],
                              tags=[RunTag("mlflow.note.content", op["note"])])
        self.client.log_text(run, op["protocol"], "protocol.yaml")

    def _open_trial(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        ref = op["ref"]
        run = self._writes.runs.get(ref) or (self._find(ref) if op.get("tried") else None)
        if run is None:
            parent = {PARENT_TAG: self._real(op["parent"])} if op.get("parent") else {}
            run = self.client.create_run(op["experiment"], start_time=op["time"], run_name=op["name"],
                                         tags={**parent, **op["tags"], KEY_TAG: ref}).info.run_id
            self._learn(op, run)
        self.client.log_batch(run, params=[Param(k, v) for k, v in op["params"]],
                              tags=[RunTag("recipe", op["recipe"])])
        recipe, layers = op["recipe_json"], op.get("layers_json")
        if layers is None:  # a spool written when recipe.json held {"recipe", "layers"}
            old = json.loads(recipe)
            recipe, layers = json.dumps(old["recipe"], indent=1), json.dumps(old["layers"], indent=1)
        self.client.log_text(run, recipe, "recipe.json")
        self.client.log_text(run, layers, "layers.json")

    def _real(self, ref: str) -> str:
        """The MLflow run id of ``ref``: itself, or the run a placeholder was opened as."""
        if not ref.startswith(PLACEHOLDER):
            return ref
        run = self._writes.runs.get(ref) or self._find(ref)
        if run is None:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

            raise MlflowException(f"no run was opened for placeholder {ref}",
                                  error_code=RESOURCE_DOES_NOT_EXIST)
        return run

    def _learn(self, op: dict[str, Any], run: str, reopened: bool = False) -> None:
        """``op`` opened (or reopened) ``run``; if ``op`` was queued, a replay after a kill may
        repeat it, so the spool keeps the run too."""
        self._writes.learn(op["ref"], run, reopened, keep=op.get("queued", False))

    def _find(self, ref: str) -> str | None:
        """The run opened under placeholder ``ref`` (by its tag), if the store has one."""
        from mlflow.entities import ViewType

        found = self.client.search_runs([self.experiment_id], f"tags.`{KEY_TAG}` = '{ref}'",
                                        run_view_type=ViewType.ALL, max_results=1)
        if not found:
            return None
        self._writes.learn(ref, found[0].info.run_id)
        return found[0].info.run_id


def _param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _ms() -> int:
    return int(time.time() * 1000)


def _placeholder() -> str:
    return PLACEHOLDER + uuid.uuid4().hex


def _render(data: Any, name: str) -> str:
    """``data`` as MLflow's ``log_dict`` writes it: YAML for ``.yaml``/``.yml``, else JSON (any
    value JSON lacks, such as a date in a recipe's ``meta``, as its text)."""
    if posixpath.splitext(name)[1] in (".yml", ".yaml"):
        import yaml

        return yaml.dump(data, indent=2, default_flow_style=False)
    return json.dumps(data, indent=2, default=str)


def _render_figure(figure: Any, name: str) -> str:
    """A matplotlib (or plotly) figure as the bytes of file ``name``, base64, as MLflow's
    ``log_figure`` would write it -- a queued write must survive the figure being closed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / posixpath.basename(name)
        if hasattr(figure, "savefig"):
            figure.savefig(path)
        elif path.suffix == ".html":
            figure.write_html(path, include_plotlyjs="cdn", auto_open=False)
        else:
            figure.write_image(path)
        return base64.b64encode(path.read_bytes()).decode("ascii")
