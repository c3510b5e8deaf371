"""A wrong protocol or space file gets one line: the file, the key path, what is expected.

One case per kind of wrong input, each written to a file and loaded the way the CLI loads it;
pydantic checks the shape (:mod:`initsearch.schema` words its first error), the loaders the rest.
"""
import subprocess
import sys

import pytest

from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.space import load_space

PROTOCOL = "format: initsearch.protocol\nversion: 1\n"
SPACE = "format: initsearch.space\nversion: 1\n"
ROLES = "roles: {conv: {init: [default, he]}}\n"

#: (file body after the header, key path, what the line says is expected)
BAD_PROTOCOLS = {
    "seed not an int": ("seeds: [a]", "seeds.0", "must be int, not 'a'"),
    "no seed": ("seeds: []", "seeds", "must be a list of int with at least 1 item, not []"),
    "seeds not a list": ("seeds: 3", "seeds", "must be a list of int, not 3"),
    "fractional epochs": ("epochs: 2.5", "epochs", "must be an integer >= 1, not 2.5"),
    "boolean epochs": ("epochs: true", "epochs", "must be an integer >= 1, not True"),
    "number read as text": ("optimizer: {lr: 1.0e4}", "optimizer.lr",
                            "must be a number >= 0, not '1.0e4' (YAML reads 1.0e4 as text: "
                            "write 1.0e+4)"),
    "number as boolean": ("flip: 1", "flip", "must be true or false, not 1"),
    "fp16": ("precision: fp16", "precision", "must be fp32, bf16 or auto, not 'fp16'"),
    "unknown key": ("epoch: 3", "unknown key(s) ['epoch']", "allowed: description, device, "),
    "unknown optimizer key": ("optimizer: {lr: 0.1, gamma: 0.5}", "optimizer",
                              "takes only name, lr, momentum, nesterov, weight_decay for sgd, "
                              "not ['gamma']"),
    "one beta": ("optimizer: {name: adamw, lr: 1.0e-3, betas: [0.9]}", "optimizer.betas",
                 "must be two numbers in [0, 1), e.g. [0.9, 0.999], not [0.9]"),
    "arch optimizer lr": ("archs: {vit: {optimizer: {lr: x}}}", "(archs.vit): optimizer.lr",
                          "must be a number >= 0, not 'x'"),
    "unknown arch": ("archs: {nope: {}}", "archs.nope",
                     "unknown architecture; choose from resnet"),
    "unknown pruner": ("pruner: {name: bogus}", "pruner.name",
                       "must be successive_halving, hyperband, median or none, not 'bogus'"),
    "unknown device": ("device: tpu", "device", "must be auto, cpu or cuda, not 'tpu'"),
    "clip off by zero": ("grad_clip: 0", "grad_clip",
                         "must be > 0 (the max global gradient norm) or null (off)"),
}

BAD_SPACES = {
    "init not a list": ("roles: {conv: {init: he}}", "roles.conv.init",
                        "must be a list of init choices: scheme names or {scheme: name, "
                        "option: value}, not 'he'"),
    "scale without 1": ("roles: {conv: {init: [he], scale: [2, 3]}}", "roles.conv.scale",
                        "must be [lo, hi] with 0 < lo <= 1 <= hi (1 must be inside"),
    "scale not numbers": ("roles: {conv: {init: [he], scale: [a, b]}}", "roles.conv.scale",
                          "must be [lo, hi], two numbers, not ['a', 'b']"),
    "layer_scales not a mapping": (ROLES + "layer_scales: [0.5, 2]", "layer_scales",
                                   "must be a mapping of module-path globs to [lo, hi], "
                                   "not [0.5, 2]"),
    "step slot not a list": (ROLES + "steps: {data: lsuv}", "steps.data",
                             "must be a list of steps: none, a step name or {step: name, "
                             "option: value}, not 'lsuv'"),
    "override to unknown role": (ROLES + "role_overrides: {head: trunk}", "role_overrides.head",
                                 "must be a role: stem, "),
    "unknown key": (ROLES + "extra: 1", "unknown key(s) ['extra']",
                    "allowed: format, version, description, roles, layer_scales, steps, "
                    "role_overrides"),
}


def _one_line(load, path, key, expected, prefix) -> None:
    with pytest.raises(UsageError) as info:
        load(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{prefix} {path}")
    assert key in message and expected in message, message
    assert message.index(key) < message.index(expected), message  # "<key> must be <expected>"


@pytest.mark.parametrize("case", BAD_PROTOCOLS)
def test_bad_protocol_file(case, tmp_path):
    text, key, expected = BAD_PROTOCOLS[case]
    path = tmp_path / "proto.yaml"
    path.write_text(f"{PROTOCOL}{text}\n")
    _one_line(load_protocol, path, key, expected, "protocol")


@pytest.mark.parametrize("case", BAD_SPACES)
def test_bad_space_file(case, tmp_path):
    text, key, expected = BAD_SPACES[case]
    path = tmp_path / "space.yaml"
    path.write_text(f"{SPACE}{text}\n")
    _one_line(load_space, path, key, expected, "space file")


def test_cli_bad_protocol_file(tmp_path, home, data_dir):
    """The console command: exit 2, one line, no traceback, nothing in the store."""
    path = tmp_path / "proto.yaml"
    path.write_text(f"{PROTOCOL}seeds: [a]\n")
    done = subprocess.run([sys.executable, "-m", "initsearch.cli", "run", "--profile", str(path),
                           "--budget", "1", "--backend", "local", "--home", str(home),
                           "--data", str(data_dir)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"initsearch: error: protocol {path}: seeds.0 must be int, not 'a'"
    assert "Traceback" not in done.stderr
    assert not (home / "mlruns").exists()
