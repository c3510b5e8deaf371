"""The result cache: keys that move with everything a result depends on, and a second search
that replays the first one's results from the real MLflow store instead of training."""
from __future__ import annotations

import dataclasses
import importlib
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient

from initsearch.archs import build_model
from initsearch.cache import KEY_TAG, SOURCE_TAG, ResultCache, model_fingerprint
from initsearch.protocol import load_protocol
from initsearch.recipe import BASELINES
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.storage import StudyStorage
from initsearch.study import search

pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_fingerprint_follows_structure_and_code(tmp_path, monkeypatch):
    same = model_fingerprint(build_model("resnet_ds", options={"depth": 8, "width": 8}))
    assert same == model_fingerprint(build_model("resnet_ds", options={"depth": 8, "width": 8}))
    assert same != model_fingerprint(build_model("resnet_ds", options={"depth": 8, "width": 16}))
    # a user's model: the same layers wired differently in forward() is another model
    src = ("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
           "        self.a = torch.nn.Linear(4, 4)\n        self.b = torch.nn.Linear(4, 4)\n"
           "    def forward(self, x):\n        return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prints = []
    for body in ("self.b(self.a(x))", "self.a(x) + self.b(x)"):
        (tmp_path / "cachenet.py").write_text(src.format(body))
        sys.modules.pop("cachenet", None)
        prints.append(model_fingerprint(importlib.import_module("cachenet").Net()))
    assert prints[0] != prints[1]


def test_key_follows_recipe_protocol_and_data():
    class _Tracker:
        pending, client, experiment_id = 0, None, "0"

    p = load_protocol("smoke")
    cache = ResultCache(_Tracker(), "model", "data")
    he, lion = BASELINES["he"].to_dict(), BASELINES["lion_dg"].to_dict()
    key = cache.key(he, p.to_dict())
    assert key == cache.key({**he, "name": "renamed"}, p.to_dict())  # content, not name
    assert key != cache.key(lion, p.to_dict())
    assert key != cache.key(he, dataclasses.replace(p, seeds=(1,)).to_dict())
    assert key != cache.key(he, dataclasses.replace(p, epochs=4).to_dict())
    assert key != ResultCache(_Tracker(), "model", "other data").key(he, p.to_dict())
    assert key == cache.key(he, dataclasses.replace(p, threads_per_trial=2).to_dict())  # placement


@pytest.mark.slow
def test_second_search_replays_the_first(data_dir, home):
    """Budget 3 (three baselines) and a race (PyTorch's default and every baseline, from 3
    seeds): every trial and job the first study trained is replayed by the second, none by a
    third with the cache off. (The MLP: the cache is the point, not the model.)"""
    confirm = ConfirmConfig(top=1, seeds=3, max_seeds=3)
    run = lambda name, **kw: RunConfig(name=name, backend="local", home=home, **kw)
    first = search("mlp", data_dir=data_dir, budget=3, profile="smoke", run=run("a"),
                   confirm=confirm)
    second = search("mlp", data_dir=data_dir, budget=3, profile="smoke", run=run("b"),
                    confirm=confirm)
    trained = 3 + sum(len(r.runs) for r in first.verdict.rows)
    assert first.stats["cached_trials"] == 0 and second.stats["cached_trials"] == trained
    assert second.stats["compute_seconds"] == 0.0 < first.stats["compute_seconds"]
    assert [r["cached"] for r in second.table] == [True] * 3 and "cached" in second.comparison()
    strip = lambda table: [{k: r[k] for k in ("name", "val_acc", "test_acc", "epochs", "state")}
                           for r in table]
    assert strip(second.table) == strip(first.table)
    assert second.verdict.text == first.verdict.text  # the same evidence, the same answer

    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("initsearch-mlp")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], "tags.stage != ''")}
    by_study = lambda s: [r for r in runs.values() if r.data.tags.get("study") == s]
    assert all(SOURCE_TAG not in r.data.tags for r in by_study("a"))
    for r in by_study("b"):  # each replayed run names a run of the first study with its key
        source = runs[r.data.tags[SOURCE_TAG]]
        assert source.data.tags["study"] == "a" and source.data.tags[KEY_TAG] == r.data.tags[KEY_TAG]
        assert client.get_metric_history(r.info.run_id, "val_acc") and r.info.status == "FINISHED"

    third = search("mlp", data_dir=data_dir, budget=3, profile="smoke",
                   run=run("c", cache=False), confirm=ConfirmConfig(seeds=0))
    assert third.stats["cached_trials"] == 0 and not any(r["cached"] for r in third.table)
    assert strip(third.table) == strip(first.table)  # trained again: the same numbers on CPU


@pytest.mark.slow
def test_the_same_command_replays_the_earlier_draws(data_dir, home, tmp_path, monkeypatch):
    """Under Ray, which trial finishes first changes TPE's later draws; here a sampler seeded
    otherwise for every study after the first stands in for that. The second study (same
    settings) still asks exactly the first one's candidates, all from the cache; one with
    another seed is not a twin and replays nothing."""
    space = tmp_path / "small.yaml"
    space.write_text("format: initsearch.space\nversion: 1\nroles:\n" + "".join(
        f"  {role}: {{init: [default, he, xavier], scale: [0.5, 2.0]}}\n"
        for role in ("stem", "linear", "classifier")))
    kw = dict(data_dir=data_dir, budget=6, profile="smoke", space=str(space),
              confirm=ConfirmConfig(seeds=0))
    first = search("mlp", run=RunConfig(name="a", backend="local", home=home), **kw)
    draws = [r for r in first.table if r["name"].startswith("trial-")]
    assert first.stats["cached_trials"] == 0 and len(draws) >= 3
    sampler = optuna.samplers.TPESampler
    monkeypatch.setattr(optuna.samplers, "TPESampler", lambda seed=0: sampler(seed=seed + 1000))
    second = search("mlp", run=RunConfig(name="b", backend="local", home=home), **kw)
    other = search("mlp", seed=1, run=RunConfig(name="c", backend="local", home=home), **kw)

    assert second.stats["cached_trials"] == 6 and second.stats["compute_seconds"] == 0.0
    strip = lambda table: [{k: r[k] for k in ("val_acc", "test_acc", "epochs", "state")} for r in table]
    assert strip(second.table) == strip(first.table)
    studies = StudyStorage(None, home / "mlruns" / "optuna")
    a, b, c = (studies.peek(name) for name in "abc")
    assert [t.params for t in b.trials] == [t.params for t in a.trials]
    assert b.user_attrs["replays"] == "a" and "replays" not in c.user_attrs
    assert second.stats["replayed_draws"] == len(draws) and other.stats["replayed_draws"] == 0
    assert other.stats["cached_trials"] == 0
    c_draws = [t.params for t in c.trials if "baseline" not in t.user_attrs]
    assert c_draws != [t.params for t in a.trials if "baseline" not in t.user_attrs]


@pytest.mark.slow
def test_a_study_records_the_precision_that_ran(data_dir, home, tmp_path):
    """A search resolves ``precision: auto`` before it hashes and records its protocol: on a CPU
    with AMX-BF16 it trains in bf16, and an fp32 study does not take its results from the cache;
    elsewhere auto is fp32, with the hash an fp32 protocol always had, and the cache serves it."""
    import torch

    from initsearch.protocol import TRIALS_DIR

    auto = tmp_path / "smoke-auto.yaml"
    auto.write_text((TRIALS_DIR / "smoke.yaml").read_text() + "\nprecision: auto\n")
    kw = dict(data_dir=data_dir, budget=1, confirm=ConfirmConfig(seeds=0))
    first = search("mlp", profile=str(auto), run=RunConfig(name="auto", backend="local", home=home), **kw)
    plain = search("mlp", profile="smoke", run=RunConfig(name="plain", backend="local", home=home), **kw)
    studies = StudyStorage(None, home / "mlruns" / "optuna")
    recorded, fp32 = (studies.peek(name).user_attrs for name in ("auto", "plain"))
    amx = bool(torch.cpu.get_capabilities().get("amx_bf16"))
    assert recorded["protocol"]["precision"] == ("bf16" if amx else "fp32")
    assert first.best.evidence["precision"] == recorded["protocol"]["precision"]  # the recipe file says it
    assert (recorded["protocol_sha256"] == fp32["protocol_sha256"]) is not amx
    assert plain.stats["cached_trials"] == (0 if amx else 1)

    # resumed with precision auto, an fp32 study goes on in fp32 (not refused as "another
    # protocol" on an AMX machine, where auto means bf16 for a new study)
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "smoke.yaml").write_text(auto.read_text())
    search("mlp", profile=str(tmp_path / "again" / "smoke.yaml"), data_dir=data_dir, budget=2,
           confirm=ConfirmConfig(seeds=0),
           run=RunConfig(name="plain", backend="local", home=home, resume=True))
    resumed = studies.peek("plain")
    assert len(resumed.trials) == 2 and resumed.user_attrs["protocol"]["precision"] == "fp32"
