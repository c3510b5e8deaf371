"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, no store."""
import subprocess
import sys

import pytest

from initsearch.cli import main


@pytest.fixture
def bad_space(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("format: initsearch.space\nversion: 1\nroles: {conv: {init: [he], scale: 3}}\n")
    return str(path)


CASES = {
    "unknown arch": (["--arch", "resnet_nope"], "unknown arch 'resnet_nope'"),
    "unknown dataset": (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    "unknown profile": (["--profile", "tpu"], "unknown profile 'tpu'"),
    "unknown space": (["--space", "nope"], "unknown space 'nope'"),
    "budget zero": (["--budget", "0"], "budget must be a whole number >= 1"),
    "budget not a number": (["--budget", "many"], "invalid int value"),
    "missing data": (["--data", "/nonexistent/cifar"], "data directory /nonexistent/cifar does not exist"),
    "empty data dir": (["--data", "{tmp}"], "holds no CIFAR-10"),
    "unreachable tracking": (["--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    "resume nothing": (["--resume", "--study", "never"], "no study 'never'"),
    "negative gpu share": (["--gpus-per-trial", "-1"], "gpus_per_trial must be >= 0"),
    "bad study name": (["--study", "a/b"], "may hold only letters"),
    "arch and model": (["--arch", "resnet_ds", "--model", "x:y"], "either --arch or --model"),
    "bad model factory": (["--model", "no_such_module:make"], "cannot load model factory"),
    "arch option not key=value": (["--arch-opt", "depth"], "must be KEY=VALUE"),
    "bad arch option value": (["--arch-opt", "norm=layer"], "norm must be one of 'batch', 'none', not 'layer'"),
    "unknown arch option": (["--arch-opt", "wdith=8"], "wdith"),
    "confirm top zero": (["--confirm-top", "0"], "confirm top must be a whole number >= 1"),
    "negative confirm seeds": (["--confirm-seeds", "-2"], "confirm seeds must be 0 (off)"),
    "two confirm seeds": (["--confirm-seeds", "2"], "no test runs on fewer paired seeds"),
    "race budget below its start": (["--confirm-max-seeds", "3", "--confirm-seeds", "4"],
                                    "raise --confirm-max-seeds"),
    "min effect in pp": (["--min-effect", "1"], "min effect must be an accuracy difference in (0, 1)"),
    "unknown race rank": (["--confirm-rank", "median"], "invalid choice"),
    "cost ratio below 1": (["--confirm-cost-ratio", "0.5"], "confirm cost ratio must be 0"),
    "negative wait for others": (["--wait-for-others", "-1"], "wait for others must be a number of seconds >= 0"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, capsys, tmp_path, home, data_dir):
    args, message = CASES[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--data" not in args:
        args += ["--data", str(data_dir)]
    code = main(["run", "--profile", "smoke", "--budget", "2", "--home", str(home),
                 "--backend", "local", "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("initsearch: error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (home / "mlruns").exists()  # nothing written to the store


@pytest.mark.parametrize("args, message", [
    (["--tracking-uri", "http://tracking.lab:5000"], "serves its own UI; open http://tracking.lab:5000"),
    ([], "no MLflow store in"),
    (["--tracking-uri", "sqlite:///relative.db"], "not a writable absolute sqlite path"),
])
def test_ui_refuses_a_store_it_cannot_serve(args, message, capsys, home):
    assert main(["ui", "--home", str(home), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_malformed_space_file(capsys, bad_space, home, data_dir):
    code = main(["run", "--space", bad_space, "--home", str(home), "--data", str(data_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "roles.conv.scale must be [lo, hi]" in err and len(err.splitlines()) == 1
    assert not (home / "mlruns").exists()


def test_console_exit_code_and_listings(capsys):
    """The console's exit code and one-line error, from a real process; the listings, in this
    one (each process would import torch again)."""
    bad = subprocess.run([sys.executable, "-m", "initsearch.cli", "run", "--budget", "-3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "budget" in bad.stderr
    for command, expected in ((["archs", "mlp"], "mlp"), (["spaces"], "default"),
                              (["profiles"], "smoke"), (["schemes"], "gradinit")):
        assert main(command) == 0
        assert expected in capsys.readouterr().out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_gpu_share_without_gpu(capsys, home, data_dir):
    code = main(["run", "--gpus-per-trial", "0.5", "--home", str(home), "--data", str(data_dir)])
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err
    code = main(["run", "--profile", "gpu", "--home", str(home), "--data", str(data_dir)])
    assert code == 2 and "use --profile cpu" in capsys.readouterr().err
    assert not (home / "mlruns").exists()


@pytest.mark.parametrize("text, message", [
    ("batch_size: x", "batch_size must be int, not"),
    ("pruner: {name: successive_halving, rungs: 3}", "pruner"),
    ("train_size: 10\nbatch_size: 64", "train_size must be at least batch_size"),
    ("epoch: 3", "unknown key(s) ['epoch']"),
    ("optimizer: {lr: 1.0e4}", "optimizer.lr must be a number >= 0, not '1.0e4' (YAML reads"),
    ("optimizer: {lr: 0.1, betas: [0.9, 0.99]}", "optimizer needs lr and takes only"),
    ("optimizer: {name: adamw, lr: 1.0e-3, momentum: 0.9}", "belong(s) to sgd: set name: sgd"),
    ("optimizer: {name: adamw, lr: 1e-3}", "optimizer.lr must be a number >= 0, not '1e-3' (YAML"),
    ("grad_clip: -1", "grad_clip must be > 0"),
    ("confirm_seeds: 1", "confirm_seeds must be 0"),
    ("confirm_seeds: 2", "no test runs on fewer paired seeds"),
    ("confirm_seeds: 5\nconfirm_max_seeds: 4", "confirm_max_seeds must be >= confirm_seeds"),
    ("confirm_max_seeds: 2", "confirm_max_seeds must be"),
    ("min_effect: 1.5", "min_effect must be an accuracy difference in (0, 1)"),
    ("confirm_rank: best", "confirm_rank must be"),
    ("confirm_cost_ratio: 0.5", "confirm_cost_ratio must be 0 (off) or above 1"),
    ("confirm_failures: keep", "confirm_failures must be"),
    ("confirm_train_size: 10\nbatch_size: 64", "confirm_train_size must be at least batch_size"),
    ("val_size: 30000\nconfirm_size: 30000", "leave no training images"),
])
def test_bad_protocol_files(text, message, tmp_path, capsys, home, data_dir):
    path = tmp_path / "proto.yaml"
    path.write_text(f"format: initsearch.protocol\nversion: 1\n{text}\n")
    code = main(["run", "--profile", str(path), "--home", str(home), "--data", str(data_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (home / "mlruns").exists()


def test_unreadable_data(tmp_path, capsys, home, monkeypatch):
    monkeypatch.setenv("INITSEARCH_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for name in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            (tmp_path / "data" / split / name / "0000.jpg").write_text("not a jpeg")
    code = main(["run", "--profile", "smoke", "--home", str(home), "--data", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read CIFAR-10" in err and len(err.splitlines()) == 1
    assert not (home / "mlruns").exists()


@pytest.mark.slow
def test_report_reads_a_study_in_a_database(capsys, home, data_dir, tmp_path):
    """``report --storage URL`` reads a study run with ``--storage URL`` (here an SQLite
    database; PostgreSQL is the same path): the newest by default, or by name."""
    from initsearch.settings import ConfirmConfig, RunConfig
    from initsearch.study import search

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    search("mlp", data_dir=data_dir, budget=1, profile="smoke", confirm=ConfirmConfig(seeds=0),
           run=RunConfig(name="in-db", backend="local", home=home, storage=url))
    capsys.readouterr()
    for study in ([], ["in-db"]):
        assert main(["report", *study, "--storage", url, "--home", str(home),
                     "--out", str(tmp_path / "rep")]) == 0
        assert "pytorch_default" in capsys.readouterr().out
    assert main(["report", "nope", "--storage", url, "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope' in sqlite:///" in err and "(studies: in-db)" in err
    assert main(["report", "--home", str(home)]) == 2  # not in the journals under --home
    assert "no study under" in capsys.readouterr().err


def test_report_bad_input(capsys, home):
    """``report`` on a study that does not exist, or that has no completed trial: one line,
    exit 2, nothing written."""
    import optuna

    assert main(["report", "--home", str(home)]) == 2
    assert "no study under" in capsys.readouterr().err
    journals = home / "mlruns" / "optuna"
    journals.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journals / "empty.journal")))
    optuna.create_study(study_name="empty", storage=storage)
    capsys.readouterr()  # Optuna's own "new study" log line, when its verbosity is INFO
    for args, message in ((["nope"], "no study 'nope'"), (["empty"], "has no completed trial")):
        code = main(["report", *args, "--home", str(home), "--out", str(home / "rep")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (home / "rep").exists()


def test_a_closed_pipe_ends_quietly(monkeypatch, capfd):
    """`initsearch claims | head -1`: the reader closes the pipe; the command stops with exit
    141 (SIGPIPE's code, as Unix tools give) and no traceback."""
    import os

    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w", buffering=1) as closed:  # line by line, as to a terminal
        monkeypatch.setattr(sys, "stdout", closed)
        assert main(["claims"]) == 141
    assert "Traceback" not in capfd.readouterr().err
