"""Any modern model: the torchvision classification zoo, built for 32x32 CIFAR-10 inputs, is
labelled without overrides -- every parameter gets a role, the residual blocks are found -- and
every published baseline that applies to it initializes it into a network with finite outputs
on real images. (Data steps run at a small batch here: the code path is the same, the cost on
ResNet-50 is not.)"""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer

from dataclasses import replace

from initsearch.recipe import BASELINES, StepInit, why_not
from initsearch.roles import discover_roles, tensors, units
from initsearch.schemes import InitData
from initsearch.trial import deep_supervision_loss

pytestmark = pytest.mark.usefixtures("one_thread")

#: (constructor, topology, baselines that must apply among others)
ZOO = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), "residual", {"zerO", "risotto"}),
    "resnet50": (lambda: tvm.resnet50(num_classes=10), "residual", {"zerO"}),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(num_classes=10), "residual", {"lsuv"}),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), "residual", set()),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), "residual", {"lsuv"}),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(num_classes=10), "residual", {"zerO"}),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), "residual", {"emergence"}),
    "vit": (lambda: VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4,
                                      hidden_dim=128, mlp_dim=256, num_classes=10),
            "transformer", {"gpt2", "mimetic"}),
    "swin_t": (lambda: tvm.swin_t(num_classes=10), "transformer", {"gpt2"}),
}


#: The fast lane's zoo: one convnet and one transformer (the others take 3-26 s each).
FAST = ("mobilenet_v3_small", "vit")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ZOO])
def test_zoo_model_is_labelled_and_every_baseline_applies(name, cifar_batch):
    build, topology, expected = ZOO[name]
    torch.manual_seed(0)
    model = build()
    roles = discover_roles(model)
    assert roles.source == "graph" and roles.topology == topology
    found = units(model)
    assert set(roles) == set(found)  # every unit has a role...
    owned = {id(t) for path in roles for t in tensors(found[path])}
    assert owned == {id(p) for p in model.parameters()}  # ...and every parameter is in a unit
    assert roles.blocks and list(roles.values()).count("classifier") == 1
    refused = {b: why for b in BASELINES if (why := why_not(b, model, roles=roles))}
    applies = [b for b in BASELINES if b not in refused]
    assert {"pytorch_default", "he", "lsuv"} | expected <= set(applies)
    if name == "mobilenet_v3_small":  # hardsigmoid has no second derivative: GradInit cannot run
        assert "second derivatives" in refused["gradinit"]
    else:
        assert "gradinit" in applies
    x, y = cifar_batch
    data = InitData(x[:96], y[:96], loss=lambda out, t: deep_supervision_loss(out, t, 0.3))
    for baseline in applies:
        net = copy.deepcopy(model)
        _cheap(BASELINES[baseline]).apply(net, data=data, seed=0, roles=roles)
        with torch.no_grad():
            out = net.eval()(x[:8])
        assert torch.isfinite(out).all(), baseline


def _cheap(recipe):
    """The recipe with its data steps on small batches (LSUV 32 images, GradInit 2 x 32)."""
    small = {"lsuv": {"batch_size": 32}, "gradinit": {"iters": 2, "batch_size": 32}}
    return replace(recipe, steps=tuple(StepInit(s.name, {**s.options, **small.get(s.name, {})})
                                       for s in recipe.steps))
