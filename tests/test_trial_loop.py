"""The trial loop's speed work leaves CPU results as they were: minibatches standardized and
augmented on the fly equal slices of the whole-split pipeline, the learning-rate table equals
LambdaLR's, the splits are uploaded once per process; bf16 autocast computes in bf16 with fp32
weights; cached epochs are replayed and training resumes exactly where they end."""
from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from initsearch import trial
from initsearch.archs import build_model
from initsearch.data import Augment, Splits, load_cifar10, load_splits, standardize
from initsearch.protocol import load_protocol, resolve_precision
from initsearch.recipe import BASELINES
from initsearch.trial import TrialConfig, lr_factor, lr_factors, make_optimizer, run_trial

pytestmark = pytest.mark.usefixtures("one_thread")
TIMES = trial.SECONDS


def _strip(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMES} for m in metrics]


@pytest.fixture(scope="module")
def smoke(data_dir):
    p, options = load_protocol("smoke").for_arch("resnet_ds")
    splits = load_splits("cifar10", data_dir, train_size=p.train_size, val_size=p.val_size,
                         test_size=p.test_size, split_seed=p.split_seed)
    return p, options, splits


def _config(p, recipe="lion_dg", **changes) -> TrialConfig:
    return TrialConfig(0, BASELINES[recipe].to_dict(), dataclasses.replace(p, **changes).to_dict())


@pytest.mark.parametrize("pad, flip", [(4, True), (0, True), (2, False)])
def test_minibatch_augmentation_equals_the_whole_split_pipeline(data_dir, pad, flip):
    train, _ = load_cifar10(data_dir)
    x = train.x[:300]
    aug = Augment.draw(len(x), pad=pad, flip=flip, generator=torch.Generator().manual_seed(3))
    whole = aug(standardize(x, channels_last=True))  # what trials computed per epoch before
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(4))[:64]
    batch = aug.take(idx)(standardize(x[idx], channels_last=True))
    assert torch.equal(whole[idx], batch)
    if flip:  # and the draws do something: some images flipped, some not
        assert 0 < int(aug.flip.sum()) < len(x)
    if pad:
        assert not torch.equal(whole, standardize(x, channels_last=True))


def test_results_equal_standardizing_the_whole_split_first(smoke, monkeypatch):
    p, options, splits = smoke
    config = _config(p, epochs=2)
    model_fn = lambda: build_model("resnet_ds", options=options)
    new = _strip(run_trial(config, splits, model_fn))
    # the former loop: the whole split standardized once on the device, batches only sliced
    floats = tuple(dataclasses.replace(s, x=standardize(s.x, channels_last=p.channels_last))
                   for s in (splits.train, splits.val, splits.confirm, splits.test))
    monkeypatch.setattr(trial, "on_device", lambda s, d: floats)
    monkeypatch.setattr(trial, "standardize", lambda x, channels_last: x)
    old = _strip(run_trial(config, splits, model_fn))
    assert new == old and math.isfinite(new[-1]["val_loss"])  # bit-identical


def test_lr_table_equals_lambda_lr_with_warmup(smoke):
    _, _, splits = smoke
    p, options = load_protocol("smoke").for_arch("mlp")
    p = dataclasses.replace(p, epochs=2, warmup_epochs=1.0, optimizer={"name": "adamw", "lr": 1e-3})
    seen: list[list[float]] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        list(run_trial(TrialConfig(0, BASELINES["he"].to_dict(), p.to_dict()), splits,
                       lambda: build_model("mlp", options=options)))
    finally:
        hook.remove()
    steps = len(splits.train) // p.batch_size
    assert len(seen) == 2 * steps and all(a == b for a, b in seen)  # both groups, every step
    model = build_model("mlp", options=options)
    opt = make_optimizer(model, [], p.optimizer)
    ref = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 2 * steps, steps, "cosine"))
    expected = []
    for _ in range(2 * steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert [lrs[0] for lrs in seen] == expected  # the value LambdaLR sets, step for step
    assert seen[0][0] == pytest.approx(1e-3 / steps) and seen[steps - 1][0] == pytest.approx(1e-3)
    assert seen[-1][0] < seen[steps][0] <= 1e-3  # then cosine decay
    assert lr_factors(p, steps)[0] == pytest.approx(1 / steps)


def test_splits_go_to_the_device_once_per_process(smoke):
    _, _, splits = smoke
    first = trial.on_device(splits, torch.device("cpu"))
    again = trial.on_device(pickle.loads(pickle.dumps(splits)), torch.device("cpu"))  # as Ray ships it
    assert all(a.x is b.x for a, b in zip(first, again)) and first[0].x.dtype == torch.uint8
    other = Splits(splits.val, splits.val, splits.test, 10)
    assert other.fingerprint != splits.fingerprint
    assert trial.on_device(other, torch.device("cpu"))[0].x is not first[0].x


@pytest.mark.slow
def test_bf16_autocast_computes_in_bf16_with_fp32_weights(smoke):
    p, options, splits = smoke
    dtypes = []
    model = build_model("resnet_ds", options=options)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    fp32 = _strip(run_trial(_config(p, epochs=1), splits, lambda: build_model("resnet_ds", options=options)))
    bf16 = _strip(run_trial(_config(p, epochs=1, precision="bf16"), splits, lambda: model))
    assert torch.bfloat16 in dtypes  # the convolutions ran in bf16 ...
    assert all(q.dtype == torch.float32 for q in model.parameters())  # ... on fp32 master weights
    assert math.isfinite(bf16[0]["train_loss"]) and bf16 != fp32  # a different, finite result


def test_auto_precision_is_bf16_only_where_the_cpu_has_amx(smoke):
    """``auto`` trains in bf16 on a CPU with AMX-BF16 tiles and in fp32 elsewhere (on AVX2
    bf16 is ~8x slower); explicit values are kept. The trial's convolutions say which ran."""
    p, options, splits = smoke
    amx = bool(torch.cpu.get_capabilities().get("amx_bf16"))
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if amx else "fp32")
    assert [resolve_precision(x, cpu) for x in ("fp32", "bf16")] == ["fp32", "bf16"]
    dtypes = []
    model = build_model("resnet_ds", options=options)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    auto = _strip(run_trial(_config(p, epochs=1, precision="auto"), splits, lambda: model))
    assert set(dtypes) == {torch.bfloat16 if amx else torch.float32}
    same = "bf16" if amx else "fp32"  # bit for bit the explicit precision it resolved to
    assert auto == _strip(run_trial(_config(p, epochs=1, precision=same), splits,
                                    lambda: build_model("resnet_ds", options=options)))


def test_cached_epochs_replay_then_training_resumes_exactly(smoke):
    p, options, splits = smoke
    model_fn = lambda: build_model("resnet_ds", options=options)
    fresh = list(run_trial(_config(p), splits, model_fn))
    cached = tuple(fresh[:1])
    config = dataclasses.replace(_config(p), cached=cached)
    resumed = list(run_trial(config, splits, model_fn))
    assert [m.get("cached", False) for m in resumed] == [True, False, False]
    assert _strip(resumed[1:]) == _strip(fresh[1:])  # the same epochs 2 and 3, bit for bit
    # epoch 1 was trained again (no checkpoint): its cost is counted once, with epoch 2
    assert resumed[1]["retrain_seconds"] > 0 and "init_seconds" not in resumed[1]
    assert "retrain_seconds" not in resumed[2] and "retrain_seconds" not in fresh[1]

    def never():
        raise AssertionError("a fully cached trial must not build its model")

    full = dataclasses.replace(_config(p), cached=tuple(fresh))
    assert _strip(run_trial(full, splits, never)) == [{**m, "cached": True} for m in _strip(fresh)]
    assert TrialConfig.from_dict(config.to_dict()) == config  # travels to a worker as plain data
