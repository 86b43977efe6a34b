#!/usr/bin/env bash
# Set up (idempotent), lint, run the test suite, then the benchmarks as one-round smokes.
# Arguments go to both test-suite invocations (e.g. -k, -x); the Ray tests are selected by their marker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# two workers (pytest-xdist): most tests are single-threaded Python on tiny models, so two cores nearly halve the
# run. The Ray tests start local Ray clusters whose actors starve beside another worker: they run alone after.
.venv/bin/python -m pytest -q -n "${RDFAST_TEST_WORKERS:-2}" -m "not ray" tests "$@"
.venv/bin/python -m pytest -q -m ray tests "$@" || [ $? -eq 5 ]   # 5: your arguments selected no Ray test
.venv/bin/python -m pytest -q -n "${RDFAST_TEST_WORKERS:-2}" bench --benchmark-disable -p no:cacheprovider
