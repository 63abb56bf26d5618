#!/usr/bin/env bash
# The Quick start's first command: the project (without the test tooling) in .venv, then the demo
# run on the embedded defaults. Arguments go to `cdp-pipeline demo` (e.g. --profiles 200).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh
ensure_venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/cdp-pipeline demo "$@"
