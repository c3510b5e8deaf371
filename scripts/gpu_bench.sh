#!/usr/bin/env bash
# The GPU benchmark on a machine with torch but no network: install initsearch's pure-Python
# needs (PyYAML, pydantic, Optuna) from wheels carried in .gpu/wheels, made beforehand with
#   pip download optuna pydantic pyyaml --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/wheels
# (numpy left out: the machine's own, beside its torch). Arguments go to gpu_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl
export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/gpu_bench.py "$@"
