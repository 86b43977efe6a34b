#!/usr/bin/env bash
# The GPU checks of a session lent a GPU machine, as ONE script (device tool: run it with a timeout that
# leaves room for one rerun; results land in $OUT, then go under bench/results/ with the GPU's name).
#   run: bash bench/gpu_check.sh        (carry .whl with diffusers if the diffusion checks should run)
# Each step has its own time limit, so one slow step never eats the others.
set -uo pipefail
OUT=${OUT:-bench/results/gpu-local}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 RDFAST_CACHE=/tmp/rdfast-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
# 1. correctness on the GPU: Triton head (fp32/bf16), varlen attention kernels, CUDA graphs
timeout 150 python3 -m pytest -q -x tests/test_ops.py tests/test_attention.py -k "gpu or cuda or triton" 2>&1 | tee "$OUT/gpu_tests.txt" | tail -5
ls tests/test_diffusion_*.py >/dev/null 2>&1 && timeout 90 python3 -m pytest -q -m gpu tests/test_diffusion_*.py 2>&1 | tail -5 | tee -a "$OUT/gpu_tests.txt"
# 2. the fused head against torch full logits (7B-like head, bf16, B = 1 and 64) with the copy roofline
timeout 120 python3 bench/head.py --heads 7b --batch 1,64 --dtypes bfloat16 --json "$OUT/head.json" --csv "$OUT/head.csv" | tail -12
# 3. throughput: the small preset, then one real architecture
timeout 150 python3 bench/throughput.py --preset small --json "$OUT/throughput_small.json" --csv "$OUT/throughput.csv"
timeout 150 python3 bench/throughput.py --preset internvl3-1b --scenarios ref16,rank8 --json "$OUT/throughput_internvl3-1b.json" --csv "$OUT/throughput.csv"
# 4. diffusion: graph replay vs eager, ReFL memory on a FLUX-shaped transformer (needs diffusers)
[ -f bench/gpu_diffusion_check.sh ] && timeout 150 bash bench/gpu_diffusion_check.sh "$OUT"
echo "done: $(ls "$OUT")"
