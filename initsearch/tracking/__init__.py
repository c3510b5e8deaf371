"""Tracking: one MLflow parent run per search, one nested child run per trial, all from the driver.

The store defaults to ``sqlite:///<home>/mlruns/mlflow.db`` with artifacts under
``<home>/mlruns/artifacts``; ``http://host:port`` names an MLflow server instead. An outage of
the store (a server going down, sqlite locked) does not stop a search: the writes wait, in
order (optionally in a JSON-lines spool file, so a killed driver loses none), one line says
so, and they are written once the store is back. One job per module:

- :mod:`~initsearch.tracking.runs` -- what a search writes where: the :class:`Tracker`;
- :mod:`~initsearch.tracking.queue` -- the writes the store has not taken yet, and their spool;
- :mod:`~initsearch.tracking.outage` -- which failures are an outage, and when to try again;
- :mod:`~initsearch.tracking.store` -- the tracking URI, and the UI link to its runs.
"""
import os

from initsearch.tracking.outage import fail_fast
from initsearch.tracking.runs import PARENT_TAG, PLACEHOLDER, Tracker
from initsearch.tracking.store import check_tracking_uri, default_tracking_uri, review_hint, runs_url

# These modules import MLflow only when first called, and MLflow reads this when imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["PARENT_TAG", "PLACEHOLDER", "Tracker", "check_tracking_uri", "default_tracking_uri",
           "fail_fast", "review_hint", "runs_url"]
