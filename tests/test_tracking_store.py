"""Where the runs live and the link that shows them: tracking URIs checked before a search, and
a review link to the UI that holds the runs -- the server's own, or the one ``initsearch ui``
serves over a local store."""
from __future__ import annotations

import socket

import pytest

from initsearch.errors import UsageError
from initsearch.tracking import check_tracking_uri, default_tracking_uri, review_hint, runs_url
from initsearch.tracking.store import LOCAL_UI, is_server, ui_base


@pytest.mark.parametrize("uri, base", [
    ("http://tracking.lab:5000", "http://tracking.lab:5000"),
    ("https://tracking.lab/mlflow/", "https://tracking.lab/mlflow"),  # behind a path prefix
    ("https://me:s3cret@tracking.lab:8443", "https://tracking.lab:8443"),  # printed: no password
    ("sqlite:////home/me/mlruns/mlflow.db", LOCAL_UI),
    ("postgresql://me:s3cret@db.lab/mlflow", LOCAL_UI),
])
def test_the_ui_of_a_store(uri, base):
    assert ui_base(uri) == base
    assert is_server(uri) == (base != LOCAL_UI)


def test_review_hint_names_the_ui_that_shows_the_runs(tmp_path, monkeypatch):
    """A server's link as it is; a local store's behind the command that serves that store."""
    monkeypatch.chdir(tmp_path)
    here, there = tmp_path, tmp_path / "elsewhere"
    local = runs_url("3", "s1", ui_base(default_tracking_uri(here)))
    assert review_hint(default_tracking_uri(here), local, here) == f"initsearch ui, then {local}"
    assert local.startswith("http://127.0.0.1:5000/#/experiments/3/runs?")
    assert review_hint(default_tracking_uri(there), local, there) == (
        f"initsearch ui --home {there}, then {local}")
    db = "postgresql://me:s3cret@db.lab/mlflow"
    assert review_hint(db, local, here) == (
        f"initsearch ui --tracking-uri postgresql://me:***@db.lab/mlflow, then {local}")
    served = runs_url("3", "s1", ui_base("http://tracking.lab:5000"))
    assert review_hint("http://tracking.lab:5000", served, here) == served
    assert served == ("http://tracking.lab:5000/#/experiments/3/runs?workflowType=machine_learning"
                      "&searchFilter=tags.study%20%3D%20%27s1%27")


def test_default_tracking_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(tmp_path / "home") == f"sqlite:///{tmp_path}/home/mlruns/mlflow.db"
    check_tracking_uri(default_tracking_uri(tmp_path / "home"))  # not there yet, but writable


@pytest.mark.parametrize("uri, words", [
    ("sqlite:///relative/mlflow.db", "not a writable absolute sqlite path"),
    ("file:///tmp/mlruns", "unsupported tracking URI"),
    ("/tmp/mlruns", "unsupported tracking URI"),
])
def test_check_tracking_uri_refuses_what_cannot_work(uri, words):
    with pytest.raises(UsageError, match=words):
        check_tracking_uri(uri)


def test_check_tracking_uri_refuses_a_server_that_does_not_answer():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="unreachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}")
