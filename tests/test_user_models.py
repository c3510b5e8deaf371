"""Models the project has never seen: a real search through the public API, the ``--model``
factory path of the CLI, ``initsearch roles`` and ``initsearch archs``, overrides in a space."""
from __future__ import annotations

import importlib
import textwrap

import pytest
from mlflow.tracking import MlflowClient
from torch import nn
from torch.nn import functional as F

import initsearch
from initsearch.cli import main
from initsearch.roles import discover_roles


class PeekNet(nn.Module):
    """A user's model: a residual unit whose skip is added in the top-level forward and
    projected by a layer called ``widen``, and an auxiliary head called ``peek``."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.c1 = nn.Conv2d(width, 2 * width, 3, 2, 1)
        self.c2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.widen = nn.Conv2d(width, 2 * width, 1, 2)
        self.peek = nn.Linear(width, num_classes)
        self.decide = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        h = F.relu(self.norm(self.inp(x)))
        out = F.relu(self.widen(h) + self.c2(F.relu(self.c1(h))))
        logits = self.decide(out.mean((2, 3)))
        return (logits, [self.peek(h.mean((2, 3)))]) if self.training else logits


def peek_net() -> nn.Module:
    return PeekNet()


def test_roles_of_the_user_model():
    roles = discover_roles(PeekNet())
    assert roles == {"inp": "stem", "norm": "norm", "c1": "conv", "c2": "branch_last",
                     "widen": "shortcut", "peek": "aux_head", "decide": "classifier"}


@pytest.mark.slow
def test_search_on_a_user_model_through_the_api(data_dir, home):
    importlib.import_module("initsearch.study")  # importing it must not shadow the function

    assert callable(initsearch.search)
    result = initsearch.search(model_fn=peek_net, data_dir=data_dir, budget=8, profile="smoke",
                               run=initsearch.RunConfig(home=home),
                               confirm=initsearch.ConfirmConfig(seeds=0))
    assert len(result.table) == 8 and {r["state"] for r in result.table} <= {"COMPLETE", "PRUNED"}
    baselines = {r["name"] for r in result.table if r["name"] in initsearch.BASELINES}
    # the generic space's baselines that apply: LION-DG yes (a head), Fixup/SkipInit no (BN)
    assert {"pytorch_default", "he", "lion_dg", "lsuv_lion_dg"} <= baselines
    assert not baselines & {"fixup", "skipinit"}
    model = peek_net()
    report = result.best.apply(model, data=initsearch.InitData(*_batch(data_dir)), seed=0)
    assert {row["path"] for row in report.plan} == set(discover_roles(model))
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    children = client.search_runs([client.get_experiment_by_name("initsearch-peek_net").experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 8 and all(c.data.tags["arch"] == "peek_net" for c in children)


def _batch(data_dir):
    from initsearch.data import load_cifar10, standardize

    train, _ = load_cifar10(data_dir)
    return standardize(train.x[:128], channels_last=False), train.y[:128]


MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class Gated(nn.Module):              # mixes channels through a bare matrix: no reading labels it
        def __init__(self, width):
            super().__init__()
            self.gate = nn.Parameter(torch.eye(width))
        def forward(self, x):
            return torch.einsum("bchw,cd->bdhw", x, self.gate)

    def make(num_classes=10, width=4):
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), Gated(width),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
''')


def test_cli_model_factory_roles_and_overrides(tmp_path, monkeypatch, capsys, home, data_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(MODULE)
    code = main(["roles", "--model", "mymodels:make"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot label 2 (Gated)" in err and "role_overrides" in err  # which module, and how
    code = main(["run", "--model", "mymodels:make", "--profile", "smoke", "--home", str(home),
                 "--data", str(data_dir), "--backend", "local", "--no-progress"])
    assert code == 2 and "cannot label 2 (Gated)" in capsys.readouterr().err
    assert not (home / "mlruns").exists()
    space = tmp_path / "gated.yaml"
    space.write_text("format: initsearch.space\nversion: 1\nextends: default\n"
                     "role_overrides: {'2': scalar_bias}\n")
    code = main(["roles", "--model", "mymodels:make", "--arch-opt", "width=6", "--space", str(space)])
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert rows["0"][1:] == ["Conv2d", "6x3x3x3", "stem"]
    assert rows["2"][1:] == ["Gated", "6x6", "scalar_bias"]  # the override from the space file
    assert rows["5"][1:] == ["Linear", "10x6", "classifier"]
    assert "roles read from the graph" in out and "not lion_dg: needs aux_head layers" in out
    applies = next(line for line in out.splitlines() if line.startswith("baselines that apply"))
    assert "emergence" in applies  # tried with the space's override, so it applies


@pytest.mark.slow
def test_archs_lists_sizes_flops_roles_and_baselines(capsys):
    assert main(["archs", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    from initsearch.archs import ARCHS

    assert {line.split()[0] for line in out.splitlines()
            if line and not line.startswith((" ", "any other model"))} == set(ARCHS)
    assert "--model timm:NAME" in out  # the archs listing says how to bring any other model
    sections = out.split("\n")
    for arch in ("resnet", "resnet_ds", "densenet_ds", "vgg", "mlp"):
        start = next(i for i, line in enumerate(sections) if line.startswith(arch + " "))
        body = "\n".join(sections[start + 1:start + 6])
        assert "MFLOPs/image" in body and "smoke" in body and "M params" in body
        assert ("lion_dg" in body.split("baselines")[1].split("\n")[0]) == arch.endswith("_ds")
    roles_lines = [line for line in sections if line.startswith("  roles")]
    assert [line.rsplit("; ", 1)[1] for line in roles_lines] == [
        "residual, 9 residual blocks", "residual, 9 residual blocks", "dense, 0 residual blocks",
        "plain, 0 residual blocks", "plain, 0 residual blocks", "transformer, 12 residual blocks",
        "transformer, 12 residual blocks"]  # resnet, resnet_ds (ResNet-20), densenet_ds, vgg, mlp, vit, postln
    vit = sections[next(i for i, line in enumerate(sections) if line.startswith("vit "))
                   :next(i for i, line in enumerate(sections) if line.startswith("transformer_postln "))]
    assert any("gpt2" in line and "mimetic" in line for line in vit if line.startswith("  baselines"))
    post = sections[next(i for i, line in enumerate(sections) if line.startswith("transformer_postln ")):]
    assert any(line.startswith("  norm=none") and "tfixup" in line for line in post)


class Patchify(nn.Module):
    """A 4x4 stride-4 stem, then one residual unit: ZerO's identity needs odd kernels, so the
    zerO baseline is refused (tried on a copy) instead of failing as a trial."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.patch(x)
        return self.fc((x + self.b(F.relu(self.a(x)))).mean((2, 3)))


def test_baselines_that_cannot_apply_are_tried_and_refused():
    from initsearch.recipe import why_not
    from initsearch.space import load_space

    model = Patchify()
    assert "odd kernel" in why_not("zerO", model)
    assert why_not("he", model) is None and why_not("risotto", model) is not None
    space = load_space("default").bind(model)
    assert "zerO" not in space.baselines() and "he" in space.baselines()
