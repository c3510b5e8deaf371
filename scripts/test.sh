#!/usr/bin/env bash
# Set up, then run the whole test suite (real Ray Tune, Optuna, MLflow and CIFAR-10; CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The fault and scale-out tests start a real PostgreSQL server (Debian's package) on loopback.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
fi
export INITSEARCH_DATA="${INITSEARCH_DATA:-$(cd .. && pwd)/shared/data/cifar10}"
exec .venv/bin/python -m pytest "$@"
