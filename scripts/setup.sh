#!/usr/bin/env bash
# Create .venv and install rdfast with everything the demo, tests and benchmarks need.
# CPU machines: torch==2.13.0 first (a local CPU wheel here); any other torch pulls a multi-GB CUDA build.
# GPU machines: install your CUDA torch first, then `pip install -e ".[hf,triton,dev,video,gpu]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==${RDFAST_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[hf,triton,dev,video,serve,ray]"
