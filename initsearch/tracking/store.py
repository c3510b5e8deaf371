"""Where a search's runs live, and where to look at them.

A tracking URI names either an MLflow server (``http(s)://host:port``), which holds the runs
and serves its own UI, or a store the driver writes itself (sqlite, another database), which
nothing serves until ``initsearch ui`` starts the MLflow UI on :data:`LOCAL_UI` over it. A
review link must point at whichever of the two shows the runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from initsearch.errors import UsageError

#: Where ``initsearch ui`` serves the MLflow UI over ``<home>/mlruns`` (its default port).
LOCAL_UI = "http://127.0.0.1:5000"


def default_tracking_uri(home: Path) -> str:
    """The project's own store: absolute, since Ray trials run in their own working directories."""
    return f"sqlite:///{(home / 'mlruns' / 'mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow server (which can go down, and serves its own UI)
    rather than a store the driver writes directly."""
    return uri.startswith(("http://", "https://"))


def answers(uri: str, timeout: float) -> bool:
    """Whether the MLflow server at ``uri`` answers its ``/health`` check within ``timeout`` s."""
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before anything is written, if the store cannot be reached."""
    if is_server(uri):
        if not answers(uri, timeout=5):
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


def ui_base(uri: str) -> str:
    """The address of the UI that shows the runs of ``uri``: a server's own (without any
    user name or password in the URI, since the link is printed), else :data:`LOCAL_UI`."""
    if not is_server(uri):
        return LOCAL_UI
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def runs_url(experiment_id: str, study: str, base: str = LOCAL_UI) -> str:
    """The MLflow UI's runs table of one study (its parent run with the trial and
    confirmation runs nested under it), in the model-training view (by default the UI opens
    an experiment in its GenAI traces view; ``workflowType=machine_learning`` switches it)."""
    search = quote(f"tags.study = '{study}'")
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={search}")


def review_hint(uri: str, url: str, home: Path) -> str:
    """How to open ``url`` (a :func:`runs_url` of store ``uri``): a server's link opens as it
    is; a local store's once ``initsearch ui`` serves it -- the command that serves this very
    store (``--home`` when it is not the current folder's, ``--tracking-uri`` when it is not
    the project's default, a password masked)."""
    if is_server(uri):
        return url
    home = home.resolve()
    serve = "initsearch ui" + ("" if home == Path.cwd().resolve() else f" --home {home}")
    if uri != default_tracking_uri(home):
        parts = urlsplit(uri)
        user, at, host = parts.netloc.rpartition("@")
        shown = uri if ":" not in user else uri.replace(parts.netloc, f"{user.split(':')[0]}:***@{host}")
        serve += f" --tracking-uri {shown}"
    return f"{serve}, then {url}"
