#!/usr/bin/env bash
# GPU checks for rdfast.diffusion (issues 6 and 7), for a session with a CUDA device. Run from the repository root:
#
#     bash bench/gpu_diffusion_check.sh            # about 6-10 minutes on one H100
#
# In order (each step is independent; a failure is recorded and the next step still runs):
#   1. tests/test_diffusion_graphs.py: CUDA-graph replay equals eager (1e-6), captured once per shape, outputs
#      are clones, gradient steps stay eager (needs no diffusers).
#   2. graph vs eager on real diffusers FLUX transformers (random weights): max |graph - eager| over a full
#      sampling run and the eager/graph step-time ratio at batch 1-4, for the 256 px "bench" FLUX and the
#      FLUX-shaped 512 px one -> bench/results/search_graphs_<gpu>.json
#   3. bench/refl_memory.py --size gpu: one ReFL step on the FLUX-shaped pipeline, naive vs rdfast, peak
#      CUDA memory and gradient cosine -> bench/results/refl_memory_<gpu>.json
#   4. video (issue 7): graph vs eager on the Wan 2.1-shaped "bench" pipeline (64 px, 17 frames), then
#      bench/refl_memory.py --pipeline wan on CUDA (frame-wise checkpointed VAE decode)
#      -> bench/results/search_graphs_wan_<gpu>.json, bench/results/refl_memory_wan_<gpu>.json
#
# The GPU machines may lack diffusers/peft and cannot download: set RDFAST_WHEELS to a folder holding their
# wheels (pure Python; e.g. `pip download diffusers peft --no-deps -d wheels` on a machine with network), and
# they are installed with --no-deps into a temporary folder put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import diffusers, peft" 2>/dev/null && [ -n "${RDFAST_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/rdfast_pydeps "$RDFAST_WHEELS"/*.whl \
    && export PYTHONPATH="/tmp/rdfast_pydeps:$PYTHONPATH"
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" || exit 1
SLUG=$($PY -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '_', torch.cuda.get_device_name(0).lower()).strip('_'))")
mkdir -p bench/results
status=0

echo "== 1. graph tests"
$PY -m pytest -q tests/test_diffusion_graphs.py -p no:cacheprovider || status=1

echo "== 2. graph vs eager on FLUX transformers"
$PY - "bench/results/search_graphs_${SLUG}.json" <<'EOF' || status=1
import json, statistics, sys, time, traceback
import torch
from rdfast.diffusion.pipelines import adapt
from rdfast.diffusion.sampler import Sampler
from rdfast.diffusion.testing import DEFAULT_SIDE, tiny_pipeline

dev = torch.device("cuda")
out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
for size in ("bench", "gpu"):
    try:
        side = DEFAULT_SIDE[("flux", size)]
        ad = adapt(tiny_pipeline("flux", size, device=dev))
        sched = ad.schedule(8, side, side)
        for batch in (1, 2, 3, 4):
            cond = ad.take(ad.encode(["a red fox in the snow"]), batch)
            x = ad.noise(batch, side, side, torch.Generator().manual_seed(batch))
            runs = {}
            for graphs in (False, True):
                s = Sampler(ad.denoise, sched, graphs=graphs)
                with torch.no_grad():
                    xs, _ = s.run(x, 0, sched.num_steps, cond)  # warm-up; captures the graph once
                    times = []
                    for _ in range(3):
                        for i in range(sched.num_steps):
                            torch.cuda.synchronize(); t0 = time.perf_counter()
                            s.step(x, i, cond)
                            torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
                runs[graphs] = (xs, statistics.median(times), s.graphs.captures, s.graphs.replays)
            diff = (runs[True][0].float() - runs[False][0].float()).abs().max().item()
            row = {"pipeline": size, "side": side, "batch": batch, "max_abs_diff": diff,
                   "bitwise_equal": bool(torch.equal(runs[True][0], runs[False][0])),
                   "eager_step_ms": runs[False][1] * 1e3, "graph_step_ms": runs[True][1] * 1e3,
                   "eager_over_graph": runs[False][1] / runs[True][1], "captures": runs[True][2]}
            out["rows"].append(row)
            print(json.dumps(row))
        del ad
        torch.cuda.empty_cache()
    except Exception as err:  # record and go on: a capture failure is itself a result
        out["rows"].append({"pipeline": size, "error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc()[-2000:]})
        print("ERROR", size, err)
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh, indent=2)
print("wrote", sys.argv[1])
EOF

echo "== 3. ReFL peak memory, FLUX-shaped pipeline"
$PY bench/refl_memory.py --size gpu --device cuda --batch 2 --threads 4 \
  --json "bench/results/refl_memory_${SLUG}.json" || status=1

echo "== 4. video: Wan graph vs eager, Wan ReFL peak memory"
$PY - "bench/results/search_graphs_wan_${SLUG}.json" <<'EOF' || status=1
import json, sys, traceback
import torch
from rdfast.diffusion.pipelines import adapt
from rdfast.diffusion.sampler import Sampler
from rdfast.diffusion.testing import DEFAULT_FRAMES, DEFAULT_SIDE, tiny_pipeline

dev, out = torch.device("cuda"), {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
try:
    side, frames = DEFAULT_SIDE[("wan", "bench")], DEFAULT_FRAMES[("wan", "bench")]
    ad = adapt(tiny_pipeline("wan", "bench", device=dev), num_frames=frames)
    sched = ad.schedule(6, side, side)
    for batch in (1, 2):
        cond = ad.take(ad.encode(["a red fox in the snow"]), batch)
        x = ad.noise(batch, side, side, torch.Generator().manual_seed(batch))
        res = {}
        for graphs in (False, True):
            s = Sampler(ad.denoise, sched, ad.evals_per_step, graphs=graphs)
            with torch.no_grad():
                s.run(x, 0, sched.num_steps, cond)  # warm-up; captures once
                res[graphs] = (s.run(x, 0, sched.num_steps, cond)[0], s.graphs.captures)
        row = {"batch": batch, "max_abs_diff": (res[True][0] - res[False][0]).abs().max().item(),
               "captures": res[True][1]}
        out["rows"].append(row)
        print(json.dumps(row))
except Exception as err:  # a capture failure is itself a result
    out["rows"].append({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]})
    print("ERROR", err)
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh, indent=2)
EOF
$PY bench/refl_memory.py --pipeline wan --device cuda --batch 2 --threads 4 \
  --json "bench/results/refl_memory_wan_${SLUG}.json" || status=1

exit $status
