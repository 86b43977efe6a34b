#!/usr/bin/env bash
# Set up (idempotent), lint, run the test suite, then the benchmarks as one-round smokes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q tests "$@"
.venv/bin/python -m pytest -q bench --benchmark-disable -p no:cacheprovider
