#!/usr/bin/env bash
# The main job: set up, then search 50 init recipes for ResNet-DS on CIFAR-10 (default profile:
# cpu without a GPU, gpu with one). Extra arguments go to `initsearch run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export INITSEARCH_DATA="${INITSEARCH_DATA:-$(cd .. && pwd)/shared/data/cifar10}"
exec .venv/bin/initsearch run --arch resnet_ds --budget 50 "$@"
