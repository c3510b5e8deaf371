#!/usr/bin/env bash
# Set up, then run the whole test suite (real Ray Tune, Optuna, MLflow and CIFAR-10; CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export INITSEARCH_DATA="${INITSEARCH_DATA:-$(cd .. && pwd)/shared/data/cifar10}"
exec .venv/bin/python -m pytest "$@"
