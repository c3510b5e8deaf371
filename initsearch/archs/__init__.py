"""Architectures: a registry of built-in model factories, plus a user's own ``module:function``."""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from initsearch.archs.densenet import DenseNet
from initsearch.archs.mlp import MLP
from initsearch.archs.resnet import ResNet
from initsearch.archs.vgg import VGG
from initsearch.archs.vit import PostLNTransformer, ViT
from initsearch.errors import UsageError


@dataclass(frozen=True)
class Arch:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    defaults: dict = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    "resnet": Arch("resnet", ResNet, "CIFAR ResNet (6n+2 layers, He et al. 2016)",
                   {"depth": 20, "width": 16, "aux_stages": (), "norm": "batch"}),
    "resnet_ds": Arch("resnet_ds", ResNet,
                      "CIFAR ResNet (6n+2) with side-tap auxiliary heads after stages 1 and 2",
                      {"depth": 20, "width": 16, "aux_stages": (1, 2), "norm": "batch"}),
    "densenet_ds": Arch("densenet_ds", DenseNet,
                        "CIFAR DenseNet-BC (6n+4) with side-tap auxiliary heads after blocks 1, 2",
                        {"depth": 100, "growth": 12, "compression": 0.5, "aux_blocks": (1, 2),
                         "norm": "batch"}),
    "vgg": Arch("vgg", VGG, "CIFAR VGG-11/13/16/19 (Simonyan & Zisserman 2015), no skips",
                {"depth": 11, "width": 64, "norm": "batch", "fc_layers": 1, "fc_width": 512}),
    "mlp": Arch("mlp", MLP, "deep MLP on flattened images (depth hidden layers of width units)",
                {"depth": 8, "width": 512, "activation": "relu", "norm": "none"}),
    "vit": Arch("vit", ViT, "pre-LN Vision Transformer for 32x32 images (Dosovitskiy et al. 2021)",
                {"patch_size": 4, "depth": 6, "width": 192, "heads": 3, "mlp_ratio": 4,
                 "norm": "layer"}),
    "transformer_postln": Arch("transformer_postln", PostLNTransformer,
                               "Post-LN Transformer encoder (Vaswani et al. 2017) on the same "
                               "patches", {"patch_size": 4, "depth": 6, "width": 192, "heads": 3,
                                           "mlp_ratio": 4, "norm": "layer"}),
}


def build_model(arch: str, *, num_classes: int = 10, options: dict | None = None) -> nn.Module:
    """Build a built-in architecture by name, a user's model from ``"package.module:function"``,
    or a timm model from ``"timm:NAME"``.

    A user factory is called with ``num_classes`` if it accepts that argument, else with none.
    ``timm:NAME`` (a name in ``timm.list_models()``) is ``timm.create_model(NAME,
    pretrained=False, num_classes=..., img_size=32, **options)`` -- sized for CIFAR's 32x32
    images where the family takes ``img_size``, at its own size otherwise.

    Raises:
        UsageError: an unknown arch or option, an invalid option value, or a factory that
            fails or returns something other than an ``nn.Module``.
    """
    options = dict(options or {})
    if arch.startswith("timm:") and _timm_model(arch[5:]):
        return _build_timm(arch[5:], num_classes, options)
    if arch.startswith("timm:"):
        raise UsageError(f"timm has no model {arch[5:]!r}; timm.list_models('*part*') lists its "
                         "names (--model timm:NAME)")
    if ":" in arch:
        factory = load_factory(arch)
        if "num_classes" in inspect.signature(factory).parameters:
            options.setdefault("num_classes", num_classes)
        try:
            model = factory(**options)
        except Exception as exc:  # a user's code: any failure is theirs to fix, said in one line
            raise UsageError(f"--model {arch} failed ({type(exc).__name__}: {exc}); check the "
                             "factory and its --arch-opt options") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {arch} returned {type(model).__name__}, not an nn.Module; "
                             "make the factory return the model")
        return model
    if arch not in ARCHS:
        raise UsageError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)} "
                         "(or pass --model package.module:function)")
    spec = ARCHS[arch]
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise UsageError(f"{arch} has no option {', '.join(map(repr, unknown))}; its options: "
                         + ", ".join(f"{k} (default {v})" for k, v in spec.defaults.items()))
    try:
        return spec.factory(num_classes=num_classes, **{**spec.defaults, **options})
    except (TypeError, ValueError) as exc:  # a bad value, e.g. depth=[11]
        raise UsageError(f"{arch}: {exc}") from None


def _timm_model(name: str) -> bool:
    """``name`` is a timm model (an error line when timm is missing)."""
    try:
        import timm
    except ImportError:
        raise UsageError(f"--model timm:{name} needs timm: pip install timm") from None
    return bool(timm.is_model(name))


def _build_timm(name: str, num_classes: int, options: dict) -> nn.Module:
    import timm

    options = {"pretrained": False, "num_classes": num_classes, **options}
    try:
        try:
            return timm.create_model(name, **{"img_size": 32, **options})
        except TypeError as exc:  # the family takes no img_size: its own input size
            if "img_size" in options or "img_size" not in str(exc):
                raise
            return timm.create_model(name, **options)
    except Exception as exc:  # noqa: BLE001 -- a bad option, said in one line
        raise UsageError(f"--model timm:{name} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                         "check its --arch-opt options") from None


def load_factory(ref: str) -> Callable[..., nn.Module]:
    """Import ``"package.module:function"``; a clear UsageError when it cannot."""
    module_name, _, attr = ref.partition(":")
    if os.getcwd() not in sys.path:  # the console script does not put the cwd on the path
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load model factory {ref!r} ({exc}); pass --model "
                         "package.module:function importable from the current directory") from None
    if not callable(factory):
        raise UsageError(f"{ref!r} is not callable; --model must name a function returning a model")
    return factory


def flops_per_image(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int | None:
    """Forward FLOPs of one image in eval mode (the main head only), counted by torch's
    ``FlopCounterMode`` (a multiply-add is 2 FLOPs; a training step costs about 3x this); None
    where the counter cannot follow the model (its module hooks fail on some timm models)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from torch.utils.flop_counter import sdpa_flop_count

    modes = {m: m.training for m in model.modules()}
    model.eval()
    # nn.MultiheadAttention's eval fast path and CPU's fused attention are invisible to the
    # counter: take the plain path, and count the CPU kernel as attention
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    mapping = {cpu_sdpa: lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    except AssertionError as exc:  # torch's module tracker on some timm models
        if "Expected gradient function" not in str(exc):
            raise
        return None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, mode in modes.items():
            m.training = mode
    return counter.get_total_flops()
