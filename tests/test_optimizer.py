"""The protocol's optimizer: SGD or AdamW over decay / no-decay groups read from the recipe's plan,
gradient clipping, warm-up -- real torch on real CIFAR-10 batches, and SGD profiles unchanged."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from initsearch import trial
from initsearch.archs import build_model
from initsearch.data import load_splits
from initsearch.errors import UsageError
from initsearch.protocol import FORMAT, VERSION, load_protocol, parse_protocol
from initsearch.recipe import BASELINES
from initsearch.trial import (TrialConfig, make_optimizer, param_groups,
                              run_trial, train_step)

pytestmark = pytest.mark.usefixtures("one_thread")


def _protocol(**body):
    return parse_protocol({"format": FORMAT, "version": VERSION, **body}, "test", "test.yaml")


class Block(nn.Module):
    """Owns a layer-scale parameter itself and has a LayerNorm and a Linear as children."""

    def __init__(self, width: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.gamma = nn.Parameter(torch.full((1, 1, width), 0.1))
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + self.gamma * self.fc(self.ln(x))


class Net(nn.Module):
    """Conv stem + BatchNorm, an embedding, a class token the container owns, a block, a head,
    and a Linear no plan row names."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.embed = nn.Embedding(10, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.block = Block(width)
        self.extra = nn.Linear(width, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        tokens = torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)  # (n, 1024, w)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        out = self.block(tokens)[:, 0]
        return self.head(self.extra(out) + self.embed.weight.mean(0))


PLAN = [{"path": "conv", "role": "stem"}, {"path": "bn", "role": "norm"},
        {"path": "embed", "role": "embedding"}, {"path": "cls", "role": "token"},
        {"path": "block.gamma", "role": "layer_scale"}, {"path": "block.ln", "role": "norm"},
        {"path": "block.fc", "role": "linear"}, {"path": "head", "role": "classifier"}]


def _names(model, params):
    names = {id(q): n for n, q in model.named_parameters()}
    return [names[id(q)] for q in params]


def test_param_groups_split_and_cover_every_parameter():
    model = Net()
    decay, rest = param_groups(model, PLAN, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    # conv/linear weights decay, the unlabelled Linear's too; the block's own gamma does not
    # (its role), but its child fc does (recurse=False); embedding and class token do not
    assert sorted(_names(model, decay["params"])) == [
        "block.fc.weight", "conv.weight", "extra.weight", "head.weight"]
    assert sorted(_names(model, rest["params"])) == [
        "block.fc.bias", "block.gamma", "block.ln.bias", "block.ln.weight", "bn.bias", "bn.weight",
        "cls", "embed.weight", "extra.bias", "head.bias"]
    ids = [id(q) for q in decay["params"] + rest["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(q) for q in model.parameters()}
    # no plan at all: the ndim rule alone, still every parameter once
    decay, rest = param_groups(model, [], 0.05)
    assert set(_names(model, decay["params"])) == {n for n, q in model.named_parameters() if q.ndim > 1}
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_adamw_built_from_the_protocol(cifar_batch):
    p = _protocol(optimizer={"name": "adamw", "lr": 3.0e-4, "betas": [0.85, 0.95], "eps": 1.0e-7,
                             "weight_decay": 0.05})
    model = Net()
    opt = make_optimizer(model, PLAN, p.optimizer)
    assert type(opt) is torch.optim.AdamW
    decay, rest = opt.param_groups
    for group in (decay, rest):
        assert group["lr"] == 3.0e-4 and group["betas"] == (0.85, 0.95) and group["eps"] == 1.0e-7
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    assert len(decay["params"]) == 4
    defaults = make_optimizer(model, PLAN, {"name": "adamw", "lr": 1.0e-3}).param_groups[0]
    assert (defaults["betas"], defaults["eps"], defaults["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.01)
    sgd = make_optimizer(model, PLAN, {"lr": 0.1})  # name absent: SGD with Nesterov momentum
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["nesterov"] \
        and sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 0
    # decoupled decay on the decay group only: one step on a real batch with the grads zeroed
    x, y = cifar_batch[0][:32], cifar_batch[1][:32]
    train_step(model, opt, x, y, p)
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    for q in model.parameters():
        q.grad.zero_()
    exp_avg = {id(q): opt.state[q]["exp_avg"].clone() for q in model.parameters()}
    opt.step()
    for n, q in model.named_parameters():
        state = opt.state[q]
        adam = 3.0e-4 * (0.85 * exp_avg[id(q)]) / (state["exp_avg_sq"].sqrt() / math.sqrt(1 - 0.95 ** 2)
                                                   + 1.0e-7) / (1 - 0.85 ** 2)
        wd = 0.05 if n in ("block.fc.weight", "conv.weight", "extra.weight", "head.weight") else 0.0
        expected = before[n] * (1 - 3.0e-4 * wd) - adam
        assert torch.allclose(q.detach(), expected, rtol=1e-5, atol=1e-8), n


def test_grad_clip_bounds_the_global_norm(cifar_batch):
    x, y = cifar_batch
    clip, lr = 0.05, 0.1
    p = _protocol(grad_clip=clip, optimizer={"lr": lr, "momentum": 0.0, "nesterov": False})
    torch.manual_seed(0)
    model = Net()
    free = copy.deepcopy(model)
    opt = make_optimizer(model, PLAN, p.optimizer)
    free_opt = make_optimizer(free, PLAN, p.optimizer)
    for i in range(4):  # a short real training loop on real CIFAR batches
        xb, yb = x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64]
        before = [q.detach().clone() for q in model.parameters()]
        train_step(model, opt, xb, yb, p)
        norm = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in model.parameters()]))
        assert norm <= clip * (1 + 1e-5)
        for q, b in zip(model.parameters(), before):  # the step used the clipped gradients
            assert torch.allclose(b - q.detach(), lr * q.grad, atol=1e-7)
        train_step(free, free_opt, xb, yb, dataclasses.replace(p, grad_clip=None))
        free_norm = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in free.parameters()]))
        assert free_norm > 2 * clip  # without the clip the norm is well above it


@pytest.fixture(scope="module")
def smoke_splits(data_dir):
    p = load_protocol("smoke")
    return load_splits("cifar10", data_dir, train_size=p.train_size, val_size=p.val_size,
                       test_size=p.test_size, split_seed=p.split_seed)


def _old_sgd(model, plan, config):
    """The optimizer trials built before ``optimizer.name`` existed."""
    decay = [q for q in model.parameters() if q.ndim > 1]
    rest = [q for q in model.parameters() if q.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": config.get("weight_decay", 0)},
                            {"params": rest, "weight_decay": 0.0}],
                           lr=config["lr"], momentum=config.get("momentum", 0.9),
                           nesterov=config.get("nesterov", True))


@pytest.mark.parametrize("arch, recipe, extra", [("resnet_ds", "lion_dg", {}),
                                                 ("resnet", "fixup", {"norm": "none"})])
def test_sgd_profiles_train_as_before(arch, recipe, extra, smoke_splits, monkeypatch):
    p, options = load_protocol("smoke").for_arch(arch)
    assert "name" not in p.optimizer and p.grad_clip is None
    p = dataclasses.replace(p, epochs=1)
    config = TrialConfig(0, BASELINES[recipe].to_dict(), p.to_dict())
    model_fn = lambda: build_model(arch, options={**options, **extra})
    strip = lambda ms: [{k: v for k, v in m.items() if not k.endswith("seconds")} for m in ms]
    new = strip(run_trial(config, smoke_splits, model_fn))
    monkeypatch.setattr(trial, "make_optimizer", _old_sgd)
    old = strip(run_trial(config, smoke_splits, model_fn))
    assert new == old and math.isfinite(new[0]["train_loss"])  # bit-identical losses and accuracies
    model = model_fn()  # and the same groups: the roles exempt nothing the ndim rule does not
    groups = param_groups(model, BASELINES[recipe].apply(model, seed=0).plan, 5e-4)
    assert [list(map(id, g["params"])) for g in groups] == \
        [list(map(id, g["params"])) for g in _old_sgd(model, [], p.optimizer).param_groups]


def test_adamw_trial_with_clip_and_warmup(smoke_splits):
    p, options = load_protocol("smoke").for_arch("mlp")
    p = dataclasses.replace(p, epochs=2, optimizer={"name": "adamw", "lr": 1.0e-3}, grad_clip=1.0,
                            warmup_epochs=0.5)
    config = TrialConfig(0, BASELINES["he"].to_dict(), p.to_dict())
    metrics = list(run_trial(config, smoke_splits, lambda: build_model("mlp", options=options)))
    assert len(metrics) == 2 and all(math.isfinite(m["train_loss"]) for m in metrics)
    assert metrics[-1]["val_acc"] > 0.15  # it learns (chance is 0.10)


@pytest.mark.parametrize("body, message", [
    ({"optimizer": {"name": "adam", "lr": 1.0e-3}}, "optimizer.name must be sgd or adamw, not 'adam'"),
    ({"optimizer": {"name": "adamw", "lr": 1.0e-3, "betas": [0.9, 0.99, 0.999]}},
     "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], not [0.9, 0.99, 0.999]"),
    ({"optimizer": {"name": "adamw", "lr": 1.0e-3, "betas": [0.9, 1.0]}}, "optimizer.betas must be"),
    ({"optimizer": {"name": "adamw", "lr": 1.0e-3, "momentum": 0.9}},
     "takes only name, lr, betas, eps, weight_decay for adamw, not ['momentum']; momentum "
     "belong(s) to sgd: set name: sgd"),
    ({"optimizer": {"lr": 0.1, "eps": 1.0e-8}}, "eps belong(s) to adamw: set name: adamw"),
    ({"optimizer": {"name": "adamw", "lr": "1e-3"}}, "optimizer.lr must be a number >= 0, not '1e-3' "
                                                     "(YAML reads 1.0e4 as text"),
    ({"optimizer": {"lr": 0.1, "momentum": 0}}, "optimizer.nesterov needs momentum > 0"),
    ({"grad_clip": -1.0}, "grad_clip must be > 0 (the max global gradient norm) or null (off), not -1.0"),
    ({"grad_clip": "1.0e4"}, "grad_clip must be float | None, not '1.0e4' (YAML reads"),
    ({"archs": {"mlp": {"optimizer": {"name": "adamw"}}}}, "(archs.mlp): optimizer needs lr"),
])
def test_bad_optimizer_settings(body, message):
    with pytest.raises(UsageError) as info:
        _protocol(**body)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1


def test_arch_override_switches_optimizer_and_hash_is_kept():
    p = _protocol(archs={"mlp": {"optimizer": {"name": "adamw", "lr": 1.0e-3}},
                         "vgg": {"optimizer": {"lr": 0.2}}})
    assert p.for_arch("mlp")[0].optimizer == {"name": "adamw", "lr": 1.0e-3}  # replaced whole
    assert p.for_arch("vgg")[0].optimizer == {**p.optimizer, "lr": 0.2}      # merged key by key
    # grad_clip off leaves the hash as it was before the key existed; on, it changes it
    assert _protocol(grad_clip=None).content_hash() == _protocol().content_hash()
    assert _protocol(grad_clip=1.0).content_hash() != _protocol().content_hash()
