#!/usr/bin/env bash
# Create .venv with everything initsearch needs; a no-op when it is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.initsearch-installed
if [ -x .venv/bin/python ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
python3 -m venv .venv
# torch first, pinned: on these x86_64 machines pip takes both wheels from the local disk.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
touch "$stamp"
