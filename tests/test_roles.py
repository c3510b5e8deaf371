import pytest
import torch
from torch import nn

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.roles import discover_roles


def test_resnet_ds_roles():
    roles = discover_roles(build_model("resnet_ds", options={"depth": 14}))
    assert roles["stem"] == "stem" and roles["classifier"] == "classifier"
    assert roles["aux_heads.stage1"] == roles["aux_heads.stage2"] == "aux_head"
    assert roles["stages.1.0.shortcut.0"] == "shortcut"
    for stage in range(3):
        for block in range(2):
            assert roles[f"stages.{stage}.{block}.conv1"] == "conv"
            assert roles[f"stages.{stage}.{block}.conv2"] == "branch_last"
    assert all(r == "norm" for p, r in roles.items() if "bn" in p or p.endswith("shortcut.1"))


class _Unit(nn.Module):  # a residual unit whose class name says nothing; its skip is "downsample"
    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.downsample = nn.Identity()

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class _OddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(_Unit(8), _Unit(8))
        self.side_probe = nn.Linear(8, 10)  # an auxiliary head under an unusual name
        self.out = nn.Linear(8, 10)
        self.gain = nn.Parameter(torch.ones(()))  # a bare parameter on the root


def test_user_model_roles_and_overrides():
    model = _OddNet()
    with pytest.raises(UsageError, match="cannot label .*role_overrides"):
        discover_roles(model)  # the root owns a bare parameter: says which and how to fix it
    roles = discover_roles(model, overrides={"": "linear"})
    assert roles["entry"] == "stem" and roles["out"] == "classifier"
    assert roles["side_probe"] == "aux_head"
    assert [roles[f"body.{i}.b"] for i in (0, 1)] == ["branch_last"] * 2
    assert [roles[f"body.{i}.a"] for i in (0, 1)] == ["conv"] * 2
    roles = discover_roles(model, overrides={"": "linear", "body.*.a": "shortcut"})
    assert roles["body.0.a"] == "shortcut"


def test_bad_overrides_are_usage_errors():
    model = build_model("resnet_ds", options={"depth": 8})
    with pytest.raises(UsageError, match="unknown role"):
        discover_roles(model, overrides={"stem": "trunk"})
    with pytest.raises(UsageError, match="matches no parameterized module"):
        discover_roles(model, overrides={"nothing.here": "conv"})
