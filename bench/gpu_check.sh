#!/usr/bin/env bash
# The GPU check: what runs first when a GPU machine (H100/H200, no network, 10 minutes per command, only files
# under the output folder come back) is lent. One command, at most 8 minutes, every step under its own hard
# timeout; a step that fails or times out is recorded with why, and the next one runs.
#
#   bash bench/gpu_check.sh OUT              # on the GPU machine, from the checkout; .whl/ beside it (README)
#   bash bench/gpu_check.sh --dry-run OUT    # on any CPU machine: resolves every step's commands and imports,
#                                            # writes placeholders in the real layout (tests/test_gpu_check.py)
#   bash bench/gpu_check.sh --print-budget   # the step budgets, one "name seconds" line each, then the total
#
# OUT receives at most 8 files, no folders: summary.txt (the one-screen summary, also printed), summary.json
# (every step: status ok / failed / timeout / skipped, why, seconds, budget; versions), head_bench.json,
# throughput.json, varlen.json, diffusion.json, logs.tar.gz (each step's full log, pytest junit XML).
# Nothing is installed into the Python environment: the wheels in .whl/ go to a --target folder on PYTHONPATH,
# and rdfast.kernels (the top-level kernels/ folder, which setup.py maps) is mapped by a generated
# sitecustomize.py, so rdfast runs from the checkout as it is, without pip install.
# Selecting steps (reruns): GPU_CHECK_STEPS=head_bench,diffusion bash bench/gpu_check.sh OUT (prereq always runs).
set -uo pipefail

# ---- the steps, in order of value: name, budget in seconds (a hard timeout), what it checks -----------------
# The budgets, prerequisites included, must sum to at most TOTAL_BUDGET (8 minutes; the device's limit is 10).
STEP_TABLE="
prereq      30  wheels from .whl/ installed, rdfast.kernels mapped, import rdfast.kernels.head, CUDA visible
head_tests  60  the Triton head on CUDA: tests/test_ops.py's cuda cases (fp32/fp16/bf16, triton and torch)
head_bench  75  head benchmark, 7B head (3584 x 152064), fp32 and bf16, B = 1..64, against the HBM read floor
throughput  90  scoring throughput at Qwen2.5-VL-3B shapes, random bf16 weights made on the GPU (no checkpoint)
varlen      60  the same model with varlen packing (torch's varlen attention; flash-attn is not on the image)
diffusion   75  CUDA-graph diffusion steps: eager vs graph on FLUX transformers (256 and 512 px), equal outputs
gpu_tests   60  the tiny-model GPU tests: pytest -m gpu tests
"
TOTAL_BUDGET=480
# The head tests have no gpu marker: named explicitly (a -k filter on "triton" would pick the CPU interpreter test).
HEAD_TESTS=(tests/test_ops.py::test_cuda_matches_float64
            tests/test_ops.py::test_cuda_auto_is_triton_and_memory_does_not_grow_with_vocab)
TP_PRESET=qwen2.5-vl-3b           # bench/throughput.py's preset: real shapes, random weights
TP_SCENARIOS=ref16,rank8          # the throughput step's scenarios; the varlen step runs the first one
# bench/throughput.py's engine-batching flag, in this one place (to become --batching length|varlen|padded):
TP_DEFAULT_ARGS=(--batching length)
TP_VARLEN_ARGS=(--batching varlen)
RESULT_STEPS="head_bench throughput varlen diffusion"   # each writes OUT/<step>.json

STEPS=() ; declare -A BUDGET WHAT
while read -r name secs what; do
  [ -n "$name" ] || continue
  STEPS+=("$name"); BUDGET[$name]=$secs; WHAT[$name]=$what
done <<<"$STEP_TABLE"

die() { echo "gpu_check: $*" >&2; exit 2; }

# ============================================================================================================
# One step, run as its own process (bash gpu_check.sh --_step NAME) under `timeout`, which kills its process
# group. Exit 0: ok; 3: skipped (why in $WORK/notes/NAME); anything else: failed. $WORK/notes/NAME: one line.
# ============================================================================================================
note() { echo "$*" >"$WORK/notes/$STEP"; echo "note: $*"; }

step_prereq() {
  echo "python: $PY ($("$PY" -V 2>&1))"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"
  else
    echo "nvidia-smi: not on PATH"
  fi
  local wheels=() fatal=0 msg=()
  if compgen -G ".whl/*.whl" >/dev/null; then wheels=(.whl/*.whl); fi
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "WARNING: no .whl/*.whl beside the checkout: diffusers is not on the GPU image, the diffusion step will fail"
    echo "         (make them with: bash scripts/fetch_gpu_wheels.sh, on a machine with network)"
    msg+=("no .whl/")
  elif [ "$DRY" = 1 ]; then
    echo "dry-run: would install ${#wheels[@]} wheels into $SITE:"; printf '  %s\n' "${wheels[@]}"
    for w in "${wheels[@]}"; do [ -s "$w" ] || { echo "ERROR: empty wheel $w"; fatal=1; }; done
    msg+=("${#wheels[@]} wheels (not installed: dry-run)")
  else
    echo "installing ${#wheels[@]} wheels into $SITE"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"; then
      msg+=("${#wheels[@]} wheels installed")
    else
      echo "ERROR: installing the wheels from .whl/ failed (above); the diffusion step will fail"
      msg+=("WHEEL INSTALL FAILED")
    fi
  fi
  # rdfast.kernels through the generated sitecustomize (never an installed copy), then CUDA.
  "$PY" - <<'EOF' || fatal=1
import importlib.util, json, os, sys
repo, dry = os.path.realpath(os.environ["REPO"]), os.environ["DRY"] == "1"
env = {"python": sys.version.split()[0]}
ok = True
try:
    import torch, triton
    import rdfast
    import rdfast.kernels.head as head
    env.update(torch=torch.__version__, triton=triton.__version__, kernels=head.__file__)
    if not os.path.realpath(head.__file__).startswith(os.path.join(repo, "kernels") + os.sep):
        print(f"ERROR: rdfast.kernels.head came from {head.__file__}, not this checkout's kernels/"); ok = False
    if not os.path.realpath(rdfast.__file__).startswith(os.path.join(repo, "rdfast") + os.sep):
        print(f"ERROR: rdfast came from {rdfast.__file__}, not this checkout"); ok = False
except Exception as err:  # loud: every later step needs these
    print(f"ERROR: import rdfast.kernels.head failed: {type(err).__name__}: {err}"); ok = False
import importlib.metadata as md
for name in ("transformers", "diffusers", "peft", "accelerate", "flash_attn"):  # versions only: the steps import them
    try:
        env[name] = md.version(name) if importlib.util.find_spec(name) is not None else None
    except md.PackageNotFoundError:
        env[name] = "?"
    if env[name] is None:
        print(f"{name}: not installed")
try:
    import torch
    env["cuda"] = torch.cuda.is_available()
    env["gpu"] = torch.cuda.get_device_name(0) if env["cuda"] else None
except Exception as err:
    env["cuda"], env["gpu"] = False, None
if not env["cuda"]:
    print("dry-run: CUDA not visible (expected on CPU)" if dry else "ERROR: CUDA is not visible to torch"); ok = ok and dry
print(json.dumps(env, indent=1))
with open(os.path.join(os.environ["WORK"], "env.json"), "w") as fh:
    json.dump(env, fh)
with open(os.path.join(os.environ["WORK"], "env.line"), "w") as fh:
    fh.write(", ".join(f"{k} {env.get(k)}" for k in ("gpu", "torch", "triton", "transformers", "diffusers", "flash_attn")))
sys.exit(0 if ok else 1)
EOF
  if [ $fatal = 1 ]; then
    touch "$WORK/prereq.fatal"; note "FATAL: rdfast.kernels.head / CUDA check failed (see logs); ${msg[*]}"; return 1
  fi
  note "$(cat "$WORK/env.line"); ${msg[*]}"
}

pytest_step() {  # pytest_step JUNIT_NAME ARGS...: run (or, dry-run, collect) and note pytest's last line
  local junit=$1; shift
  local mode=(--junitxml "$PARTS/$junit.xml" -rs) out rc
  [ "$DRY" = 1 ] && mode=(--collect-only)
  "$PY" -m pytest -q -p no:cacheprovider "${mode[@]}" "$@" 2>&1 | tee "$PARTS/pytest.txt"
  rc=${PIPESTATUS[0]}
  out=$(grep -E "passed|failed|error|collected|no tests ran|skipped" "$PARTS/pytest.txt" | tail -1)
  note "${out:-pytest printed no summary (rc $rc)}"
  if [ "$DRY" = 1 ] && ! grep -qE "^[0-9]+(/[0-9]+)? tests? collected" "$PARTS/pytest.txt"; then
    echo "ERROR: dry-run collected no tests"; return 1
  fi
  return "$rc"
}

step_head_tests() { pytest_step head_tests "${HEAD_TESTS[@]}"; }

step_gpu_tests() { pytest_step gpu_tests -m gpu tests; }

step_head_bench() {
  local rc=0 dt
  if [ "$DRY" = 1 ]; then  # the same script, on the CPU, one tiny case
    "$PY" bench/head.py --device cpu --heads small --batch 1 --dtypes float32 --repeats 1 --no-backward \
      --backends torch --csv '' --json "$PARTS/float32.json" || rc=1
  else
    for dt in bfloat16 float32; do  # bf16 first: the dtype scoring runs in
      "$PY" bench/head.py --heads 7b --batch 1,4,16,64 --dtypes $dt --repeats 5 --csv '' \
        --json "$PARTS/$dt.json" || rc=1
    done
  fi
  # the HBM read floor beside the measured read: weight bytes / the GPU's HBM bandwidth (bench/common.py)
  "$PY" - "$PARTS"/*.json <<'EOF' || rc=1
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["REPO"], "bench"))
from common import gpu_peaks
for path in sys.argv[1:]:
    result = json.load(open(path))  # bench/common.py's schema: environment fields and "rows"
    rows = result["rows"]
    for r in rows:
        peaks = gpu_peaks(result["machine"]) if result["device_type"] == "cuda" else None
        size = 4 if r["dtype"] == "float32" else 2
        floor = r["H"] * r["V"] * size / peaks[1] * 1e3 if peaks else None
        passes = 2 if r["pass"] == "fwd+bwd" else 1
        r["hbm_floor_ms"] = round(floor, 4) if floor else None
        r["x_hbm_floor"] = round(r["median_ms"] / (passes * floor), 3) if floor else None
    json.dump(result, open(path, "w"), indent=1)
    print(path, len(rows), "rows")
EOF
  note "$(cat "$PARTS"/*.json 2>/dev/null | "$PY" -c 'import sys; print(sys.stdin.read().count("\"backend\""), "rows")')"
  return $rc
}

throughput_py() {  # throughput_py SCENARIOS ARGS...: bench/throughput.py's main, model built on the device
  TP_SCENARIOS_RUN=$1 "$PY" - "${@:2}" <<'EOF'
import collections, json, os, sys, time, importlib.util
sys.path.insert(0, os.path.join(os.environ["REPO"], "bench"))
import torch
import throughput as T
from rdfast import testing as RT
from rdfast.families import family_for
from rdfast.model import RewardModel
from rdfast.prompts import resolve_answer_tokens
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

dry, parts, work = os.environ["DRY"] == "1", os.environ["PARTS"], os.environ["WORK"]
built = {}


def build(args, preset):
    """The preset's model with random weights made directly on the device (meta in the dry run): the same config,
    tokenizer and processor as rdfast.testing.tiny_checkpoint(family, **overrides) would write, without weights."""
    if "rm" in built:
        return built["rm"]
    t0 = time.perf_counter()
    device = torch.device("meta" if dry else "cuda")
    tok = RT._tokenizer(preset.family)
    cfg, proc, proc_cfg = RT._config_and_processor(preset.family, tok, preset.overrides)
    folder = os.path.join(work, f"processor-{preset.family}")  # tokenizer and processor files only
    os.makedirs(folder, exist_ok=True)
    tok.save_pretrained(folder)
    json.dump(proc, open(os.path.join(folder, "preprocessor_config.json"), "w"))
    if proc_cfg is not None:
        json.dump(proc_cfg, open(os.path.join(folder, "processor_config.json"), "w"))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    family = family_for(config, tokenizer, processor)
    answers = resolve_answer_tokens(tokenizer, family.image_placeholder, ("yes", "no"))
    rm = RewardModel(model, tokenizer, family, answers, normalize="vocab", batch_size=16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    info = {"dry_run": dry, "device": str(device), "params": params, "build_s": time.perf_counter() - t0,
            "model_class": type(model).__name__, "attn_implementation": getattr(config, "_attn_implementation", None),
            "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None,
            "gpu_memory_gb": torch.cuda.memory_allocated() / 1e9 if device.type == "cuda" else None}
    print("model:", json.dumps(info))
    assert params > 2.5e9, f"{params / 1e9:.2f} B parameters is no 3B-class model"
    json.dump(info, open(os.path.join(parts, "model.json"), "w"), indent=1)
    built["rm"] = rm
    return rm


T.load_model = build
if dry:  # everything but the measurement (a meta model cannot run): flags, options, model and printing resolve
    T.measure = lambda rm, name, preset, *args, **kwargs: collections.defaultdict(
        lambda: float("nan"), name=name, dry_run=True)
for scenario in os.environ["TP_SCENARIOS_RUN"].split(","):  # one file per scenario: a timeout keeps the others
    out = os.path.join(parts, f"{scenario}.json")
    T.main(["--preset", os.environ["TP_PRESET"], "--scenarios", scenario, *sys.argv[1:], "--json", out, "--csv", ""])
    if not dry:
        from rdfast import attention
        res = json.load(open(out))
        res["varlen_backend_auto"] = attention.available_backend()
        res["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
        json.dump(res, open(out, "w"), indent=2)
EOF
}

step_throughput() {
  throughput_py "$TP_SCENARIOS" "${TP_DEFAULT_ARGS[@]}" || return 1
  note "$(tp_note)"
}

step_varlen() {
  throughput_py "${TP_SCENARIOS%%,*}" "${TP_VARLEN_ARGS[@]}" || return 1
  note "$(tp_note)"
}

tp_note() {
  "$PY" - "$PARTS" <<'EOF'
import glob, json, os, sys
out = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(path))
    for r in d.get("scenarios", []):
        g = lambda key: r.get(key, float("nan"))  # noqa: E731 (placeholders of the dry run lack them)
        out.append(f"{r['name']} {g('rdfast_pairs_per_s'):.1f} pairs/s, {g('speedup_vs_hf_batched'):.2f}x hf, "
                   f"max |dlogp| vs hf {g('max_abs_logp_diff_vs_hf'):.2g}" + (" (dry-run)" if r.get("dry_run") else ""))
print("; ".join(out) or "no scenario finished")
EOF
}

step_diffusion() {
  "$PY" - <<'EOF'
import json, os, statistics, time, traceback
import torch
from rdfast.diffusion.pipelines import adapt
from rdfast.diffusion.sampler import Sampler
from rdfast.diffusion.testing import DEFAULT_SIDE, tiny_pipeline

dry, parts = os.environ["DRY"] == "1", os.environ["PARTS"]
dev = torch.device("cpu" if dry else "cuda")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
# (pipeline size, batches, steps): the 256 px "bench" FLUX and the FLUX-shaped 512 px one (~0.9 B, built on the GPU)
plan = [("tiny", (1,), 2)] if dry else [("bench", (1, 2, 4), 8), ("gpu", (1, 2), 8)]
rows, failed = [], 0
path = os.path.join(parts, "rows.json")
for size, batches, steps in plan:
    try:
        side = DEFAULT_SIDE[("flux", size)]
        t0 = time.perf_counter()
        ad = adapt(tiny_pipeline("flux", size, device=dev))
        build_s = time.perf_counter() - t0
        sched = ad.schedule(steps, side, side)
        for batch in batches:
            cond = ad.take(ad.encode(["a red fox in the snow"]), batch)
            x = ad.noise(batch, side, side, torch.Generator().manual_seed(batch))
            runs = {}
            for graphs in (False, True):
                s = Sampler(ad.denoise, sched, graphs=graphs)
                with torch.no_grad():
                    xs, _ = s.run(x, 0, sched.num_steps, cond)  # warm-up; captures the graph once
                    times = []
                    for _ in range(1 if dry else 3):
                        for i in range(sched.num_steps):
                            sync(); t1 = time.perf_counter()
                            s.step(x, i, cond)
                            sync(); times.append(time.perf_counter() - t1)
                runs[graphs] = (xs, statistics.median(times), s.graphs.captures, s.graphs.replays)
            diff = (runs[True][0].float() - runs[False][0].float()).abs().max().item()
            row = {"pipeline": size, "side": side, "batch": batch, "steps": steps, "build_s": build_s,
                   "max_abs_diff": diff, "bitwise_equal": bool(torch.equal(runs[True][0], runs[False][0])),
                   "eager_step_ms": runs[False][1] * 1e3, "graph_step_ms": runs[True][1] * 1e3,
                   "eager_over_graph": runs[False][1] / runs[True][1], "captures": runs[True][2],
                   "replays": runs[True][3], "dry_run": dry}
            rows.append(row)
            print(json.dumps(row), flush=True)
            json.dump(rows, open(path, "w"), indent=1)  # after every row: a timeout keeps what finished
        del ad
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as err:  # a capture failure is itself a result
        failed += 1
        rows.append({"pipeline": size, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]})
        print("ERROR", size, err, flush=True)
        json.dump(rows, open(path, "w"), indent=1)
ok = [r for r in rows if "error" not in r]
summary = (f"max |graph - eager| {max(r['max_abs_diff'] for r in ok):.3g}, eager/graph step time "
           f"{min(r['eager_over_graph'] for r in ok):.2f}-{max(r['eager_over_graph'] for r in ok):.2f}x" if ok else "no rows")
open(os.path.join(os.environ["WORK"], "notes", "diffusion"), "w").write(f"{len(ok)} rows, {summary}, {failed} errors\n")
raise SystemExit(1 if failed or not ok else 0)
EOF
}

run_step_mode() {
  STEP=$1; PARTS="$WORK/parts/$STEP"; export PARTS; mkdir -p "$PARTS"
  if [ "$DRY" = 1 ]; then  # test hooks (dry run only): GPU_CHECK_INJECT=step:hang,step:fail,step:pass
    case ",${GPU_CHECK_INJECT:-}," in
      *",$STEP:hang,"*) echo "injected hang"; sleep 100000 ;;
      *",$STEP:fail,"*) note "injected failure"; exit 1 ;;
      *",$STEP:pass,"*) note "injected pass"; echo '{"dry_run": true}' >"$WORK/env.json"; : >"$WORK/env.line"; exit 0 ;;
    esac
  fi
  declare -F "step_$STEP" >/dev/null || die "no step $STEP"
  "step_$STEP"
}

# ============================================================================================================
# The driver
# ============================================================================================================
finalize() {  # bundle OUT/<step>.json for the result steps, write summary.json and summary.txt
  "$PY" - <<'EOF'
import glob, json, os, time
work, out, dry = os.environ["WORK"], os.environ["OUT"], os.environ["DRY"] == "1"
steps = []
for line in open(os.path.join(work, "steps.tsv")):
    name, budget, status, seconds, what = line.rstrip("\n").split("\t")
    note_path = os.path.join(work, "notes", name)
    note = open(note_path).read().strip() if os.path.exists(note_path) else ""
    steps.append({"name": name, "status": status, "budget_s": int(budget),
                  "seconds": None if seconds == "-" else float(seconds), "note": note, "what": what})
env_path = os.path.join(work, "env.json")
env = json.load(open(env_path)) if os.path.exists(env_path) else {}
by_name = {s["name"]: s for s in steps}
for name in os.environ["RESULT_STEPS"].split():
    s = by_name.get(name, {"status": "pending", "note": ""})
    parts = {}
    for path in sorted(glob.glob(os.path.join(work, "parts", name, "*.json"))):
        try:
            parts[os.path.basename(path)[:-5]] = json.load(open(path))
        except ValueError as err:  # cut off by a timeout mid-write
            parts[os.path.basename(path)[:-5]] = {"unreadable": str(err)}
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        json.dump({"step": name, "dry_run": dry, "status": s["status"], "note": s["note"], "gpu": env.get("gpu"),
                   "torch": env.get("torch"), "parts": parts}, fh, indent=1)
budgets = [int(b) for b in os.environ["BUDGETS"].split()]
summary = {"dry_run": dry, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "gpu": env.get("gpu"), "env": env,
           "total_budget_s": int(os.environ["TOTAL_BUDGET"]), "budget_sum_s": sum(budgets),
           "wall_s": round(time.time() - float(os.environ["START"]), 1), "steps": steps}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
lines = [f"rdfast GPU check{' (DRY RUN: placeholders, nothing measured)' if dry else ''} - {summary['date']}",
         f"gpu {env.get('gpu')}  torch {env.get('torch')}  triton {env.get('triton')}  "
         f"transformers {env.get('transformers')}  diffusers {env.get('diffusers')}",
         f"wall {summary['wall_s']} s of budgets summing to {sum(budgets)} s (limit {summary['total_budget_s']} s)", ""]
for s in steps:
    secs = "-" if s["seconds"] is None else f"{s['seconds']:.0f}"
    lines.append(f"{s['name']:<11} {s['status']:<8} {secs:>4}/{s['budget_s']:<3}s  {s['note'][:150]}")
try:  # the head figures that matter: triton against the read floor, bf16 forward
    rows = json.load(open(os.path.join(out, "head_bench.json")))["parts"].get("bfloat16", {}).get("rows", [])
    for r in rows:
        if r["backend"] == "triton" and r["pass"] == "fwd":
            lines.append(f"  head bf16 fwd B={r['B']:<3} triton {r['median_ms']:.3f} ms = {r['x_read']:.2f}x measured read, "
                         f"{r['x_hbm_floor']}x HBM floor; {r['speedup_vs_best_torch']:.1f}x best plain torch")
except Exception:
    pass
try:
    for name in ("throughput", "varlen"):
        parts = json.load(open(os.path.join(out, f"{name}.json")))["parts"]
        for key, d in parts.items():
            for r in d.get("scenarios", []) if isinstance(d, dict) else []:
                frac = r.get("fraction_of_bf16_peak")
                lines.append(f"  {name} {r['name']}: {r['rdfast_pairs_per_s']:.1f} pairs/s, {r['speedup_vs_hf_batched']:.2f}x hf_batched"
                             f", {r['unique_tflop_per_s']:.0f} TFLOP/s" + (f" ({frac:.0%} of dense bf16)" if frac else ""))
except Exception:
    pass
lines.append(f"files: {', '.join(sorted(os.listdir(out)))}")
open(os.path.join(out, "summary.txt"), "w").write("\n".join(lines) + "\n")
EOF
}

main() {
  local dry=0 print_budget=0 out=""
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) dry=1 ;;
      --print-budget) print_budget=1 ;;
      -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
      -*) die "unknown option $1" ;;
      *) [ -z "$out" ] || die "one OUT folder only"; out=$1 ;;
    esac
    shift
  done
  local sum=0 s
  for s in "${STEPS[@]}"; do sum=$((sum + BUDGET[$s])); done
  if [ $print_budget = 1 ]; then
    for s in "${STEPS[@]}"; do echo "$s ${BUDGET[$s]}"; done
    echo "total $sum"; echo "limit $TOTAL_BUDGET"; exit 0
  fi
  [ "$sum" -le "$TOTAL_BUDGET" ] || die "the step budgets sum to $sum s, over $TOTAL_BUDGET s"
  [ -n "$out" ] || die "usage: bash bench/gpu_check.sh [--dry-run] OUT"
  REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || die "no repository"
  SELF="$REPO/bench/$(basename "${BASH_SOURCE[0]}")"
  cd "$REPO" || die "cannot cd to $REPO"
  mkdir -p "$out" || die "cannot create $out"
  OUT=$(cd "$out" && pwd); DRY=$dry
  PY=${PYTHON:-python3}
  command -v "$PY" >/dev/null || die "no $PY"
  command -v timeout >/dev/null || die "no timeout (coreutils)"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/rdfast-gpu-check.XXXXXX") || die "no temporary folder"
  mkdir -p "$WORK/notes" "$WORK/parts" "$WORK/logs" "$WORK/boot"
  if [ "$DRY" = 1 ]; then SITE="$WORK/site"; else SITE=/tmp/site; fi
  mkdir -p "$SITE"
  # rdfast.kernels is the top-level kernels/ folder (setup.py's package_dir): map it with a meta-path finder placed
  # right after the path finder, the way an editable install does, but only for this run's processes.
  cat >"$WORK/boot/sitecustomize.py" <<EOF
# written by bench/gpu_check.sh: rdfast.kernels -> \$RDFAST_GPU_CHECK_KERNELS ($REPO/kernels), without installing rdfast
import importlib.abc, importlib.machinery, importlib.util, os, sys

_KERNELS = os.environ.get("RDFAST_GPU_CHECK_KERNELS")


class _RdfastKernels(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "rdfast.kernels" or not _KERNELS:
            return None
        return importlib.util.spec_from_file_location(
            name, os.path.join(_KERNELS, "__init__.py"), submodule_search_locations=[_KERNELS])


_at = next((i + 1 for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
sys.meta_path.insert(_at, _RdfastKernels())
# run the sitecustomize this one hides, if any
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
EOF
  export REPO OUT DRY PY WORK SITE TOTAL_BUDGET RESULT_STEPS TP_PRESET RDFAST_GPU_CHECK_KERNELS="$REPO/kernels"
  export PYTHONPATH="$WORK/boot:$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  [ "$DRY" = 1 ] || export RDFAST_CACHE=/tmp/rdfast-cache  # tiny checkpoints; the dry run reuses the usual cache
  export START; START=$(date +%s.%N)
  export BUDGETS; BUDGETS=$(for s in "${STEPS[@]}"; do echo "${BUDGET[$s]}"; done | tr '\n' ' ')
  local name in_out
  for name in summary.txt summary.json logs.tar.gz $RESULT_STEPS; do rm -f "$OUT/$name" "$OUT/$name.json"; done
  in_out=$(ls -A "$OUT")
  [ -z "$in_out" ] || echo "WARNING: $OUT already holds: $in_out (only 8 files come back)"
  echo "== rdfast GPU check$([ "$DRY" = 1 ] && echo ' (dry run)') -> $OUT; budgets ${BUDGETS}(sum $sum of $TOTAL_BUDGET s)"
  : >"$WORK/steps.tsv"
  local status rc t0 t1 secs selected="${GPU_CHECK_STEPS:-}" failures=0 budget
  for name in "${STEPS[@]}"; do
    budget=${BUDGET[$name]}
    if [ "$DRY" = 1 ] && [[ ",${GPU_CHECK_BUDGET:-}," == *",$name="* ]]; then  # test hook: name=seconds
      budget=$(sed "s/.*,$name=\([0-9]*\).*/\1/" <<<",$GPU_CHECK_BUDGET,")
    fi
    secs=-
    if [ "$name" != prereq ] && [ -n "$selected" ] && [[ ",$selected," != *",$name,"* ]]; then
      status=skipped; echo "not selected (GPU_CHECK_STEPS=$selected)" >"$WORK/notes/$name"
    elif [ "$name" != prereq ] && [ -e "$WORK/prereq.fatal" ]; then
      status=skipped; echo "prerequisites failed (see prereq)" >"$WORK/notes/$name"
    else
      echo "== $name (budget ${budget} s): ${WHAT[$name]}"
      t0=$(date +%s.%N)
      timeout -k 10 "$budget" bash "$SELF" --_step "$name" >"$WORK/logs/$name.log" 2>&1
      rc=$?
      t1=$(date +%s.%N); secs=$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")
      case $rc in
        0) status=ok ;;
        3) status=skipped ;;
        124|137) status=timeout
           echo "timed out after ${budget} s; last output: $(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -1 | cut -c1-120)" >"$WORK/notes/$name" ;;
        *) status=failed
           echo "exit $rc: $(grep -E 'Error|ERROR|FAILED|error' "$WORK/logs/$name.log" | tail -1 | cut -c1-160) | $(cat "$WORK/notes/$name" 2>/dev/null)" >"$WORK/notes/$name.tmp"
           mv "$WORK/notes/$name.tmp" "$WORK/notes/$name" ;;
      esac
      tail -n 4 "$WORK/logs/$name.log" | cut -c1-200 | sed 's/^/   | /'
      echo "   -> $status in ${secs} s"
    fi
    [ "$status" = ok ] || [ "$status" = skipped ] || failures=$((failures + 1))
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$budget" "$status" "$secs" "${WHAT[$name]}" >>"$WORK/steps.tsv"
    finalize || echo "WARNING: writing the summary failed"
  done
  find "$WORK/parts" -name '*.xml' -exec cp {} "$WORK/logs/" \;
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs || echo "WARNING: tar failed"
  finalize || echo "WARNING: writing the summary failed"
  echo; cat "$OUT/summary.txt"
  rm -rf "$WORK"
  [ $failures = 0 ]
}

if [ "${1:-}" = --_step ]; then run_step_mode "$2"; exit $?; fi
main "$@"
