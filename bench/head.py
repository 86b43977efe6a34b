"""Benchmark the fused yes-token head (rdfast.ops.token_logprobs) against the best plain-torch formulation.

For each head (Qwen2-VL-7B-like H=3584, V=152064 and a small H=896, V=32000), dtype and batch size it times
every available rdfast backend ("cpp", "triton"; "torch" is rdfast's own chunked fallback) and two plain-torch
formulations an expert would write, on a contiguous 2-D hidden:
    torch_mm_hw: logits = (hidden @ weight.T).float() [B, V], logsumexp over V, pick the yes/no logits;
    torch_mm_wh: logits = torch.mm(weight, hidden.T).float() [V, B], the same over dim 0.
The baseline of each case is the faster of the two (``best_torch``), measured in the same rounds; every row
says its speedup over it. Forward runs under no_grad (scoring); forward+backward takes the gradient to hidden
only (a frozen head).

The bounds, measured in the same run: ``read_ms`` is the time to read the weight once (the faster of a float32
sum over its bytes and a matrix-vector product over them, torch's own streaming kernels), ``gemm_flops_per_s`` the dtype's matrix-multiply rate on a compute-bound square product; a pass that
reads the weight n times (forward 1, forward+backward 2) and does n [B, H] x [H, V] products cannot beat
``floor_ms`` = n * max(read_ms, 2*B*V*H / gemm rate), so ``max_speedup_vs_best_torch`` = best torch / floor
bounds what any kernel can gain over the baseline.

    python bench/head.py                          # full run, appends to bench/results/head.csv
    python bench/head.py --threads 1 --clock cpu  # 1-thread CPU-time ratios: robust on a shared machine
    python bench/head.py --smoke --csv '' --json /tmp/head.json

The JSON is bench/common.py's result schema (``environment()``: machine, threads, load, versions, git commit,
date) with the rows under "rows"; the CSV gets one line per row with those fields beside it. Times are medians
of calls interleaved round-robin across the methods. Peak extra memory: on CUDA torch.cuda.max_memory_allocated;
on CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before the call, with
glibc's mmap threshold pinned so freed buffers really leave. Nothing here asserts timings.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import roofline  # noqa: E402

from common import append_csv, environment, flat_rows, load_average, write_json  # noqa: E402
from rdfast import ops  # noqa: E402

HEADS = {"7b": (3584, 152064), "small": (896, 32000), "smoke": (256, 8000)}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "head.csv")
BASELINES = ("torch_mm_hw", "torch_mm_wh")  # plain torch, [B, V] and [V, B] logits


# ----------------------------------------------------------------------------------------------------
# Inputs and the baselines (also used by bench/test_bench_head.py)


def make_head(H, V, dtype, device="cpu", B=1, seed=0):
    """weight [V, H] ~ N(0, 1/H) filled in place (no fp32 temporary), hidden [B, H], ids [2] (yes, no)."""
    torch.manual_seed(seed)
    weight = torch.empty(V, H, dtype=dtype, device=device).normal_(0.0, H**-0.5)
    hidden = torch.randn(B, H, device=device).to(dtype)
    ids = torch.tensor([V // 3, V // 2], device=device)
    return hidden, weight, ids


def torch_mm_hw(hidden, weight, ids):
    """[B, V] logits in the input dtype (as a model's lm_head gives them), logsumexp in fp32: (logp [B, K], lse)."""
    z = (hidden @ weight.T).float()
    lse = torch.logsumexp(z, dim=1)
    return z[:, ids] - lse[:, None], lse


def torch_mm_wh(hidden, weight, ids):
    """The same with [V, B] logits from torch.mm(weight, hidden.T) (the weight as the left operand)."""
    z = torch.mm(weight, hidden.T).float()
    lse = torch.logsumexp(z, dim=0)
    return z[ids].T - lse[:, None], lse


def run_head(backend, hidden, weight, ids):
    if backend in BASELINES:
        return globals()[backend](hidden, weight, ids)
    return ops.token_logprobs(hidden, weight, ids, backend=backend)


def step(backend, hidden, weight, ids, backward):
    """One call of a method; with backward, gradient to hidden only."""
    if not backward:
        with torch.no_grad():
            return run_head(backend, hidden, weight, ids)
    hidden.grad = None
    logp, lse = run_head(backend, hidden, weight, ids)
    (logp.sum() + lse.sum()).backward()


# ----------------------------------------------------------------------------------------------------
# Measurement


class Memory:
    """Peak extra memory of one call (bytes)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if not self.cuda and sys.platform.startswith("linux"):
            try:  # fixed mmap threshold: large buffers are mmapped and unmapped, so peak RSS sees each op
                ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
            except OSError:
                pass

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
                self.base = self._status("VmRSS")
            except OSError:
                self.base = None

    def peak(self):
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return None if self.base is None else max(0, self._status("VmHWM") - self.base)

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024


def measure(fns, repeats, device, memory, budget_s=5.0, clock=time.perf_counter, collect=True):
    """{name: (median s, min s, peak extra bytes, n)}. Calls are interleaved round-robin (one warm-up each,
    then one call of every function per round), so a load that changes during the run hits all of them alike.
    A function gets fewer than `repeats` calls when its warm-up says they would take more than budget_s, and a
    warm-up of a second or more (the slow methods, nothing left to warm) counts as one of them. ``collect``: a full
    garbage collection before each call, so the peak memory sees only the call's own buffers (~0.1 s each)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, times, peak = {}, {name: [] for name in fns}, {name: None for name in fns}

    def call(name):
        if collect:
            gc.collect()
        memory.start()
        t0 = clock()
        fns[name]()
        sync()
        times[name].append(clock() - t0)
        p = memory.peak()
        peak[name] = None if p is None else max(peak[name] or 0, p)

    for name in fns:
        call(name)
        first = times[name][0]
        n[name] = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
        if first < 1.0:
            times[name], peak[name] = [], None
    for _r in range(repeats):
        for name in fns:
            if len(times[name]) < n[name]:
                call(name)
    return {name: (statistics.median(t), min(t), peak[name], len(t)) for name, t in times.items()}


def bytes_as_fp32(weight):
    """The weight's bytes as one float32 vector (bf16/fp16 pairs reinterpreted): summing it reads them once."""
    flat = weight.view(-1)
    return flat.view(torch.float32) if weight.element_size() == 2 and flat.numel() % 2 == 0 else flat


# ----------------------------------------------------------------------------------------------------


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="seconds: a 256 x 8000 head, B in {1, 4}, 1 repeat")
    p.add_argument("--quick", action="store_true", help="small head, B in {1, 4}, 2 repeats")
    p.add_argument("--heads", default="7b,small", help="comma list of: " + ",".join(HEADS))
    p.add_argument("--batch", default="1,4,16,64", help="comma list of batch sizes")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--backends", default=None, help="comma list of rdfast backends (default: every available one)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch and rdfast threads (default: torch's)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (with --threads 1, ratios that load on other cores cannot distort)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--csv", default=RESULTS, help="append rows here ('' to skip)")
    p.add_argument("--json", default=None, help="also write the result (environment + rows) to this JSON file")
    a = p.parse_args(argv)
    if a.quick:
        a.heads, a.batch, a.repeats = "small", "1,4", 2
    if a.smoke:
        a.heads, a.repeats = "smoke", 1
        a.batch = a.batch if a.batch != p.get_default("batch") else "1,4"
    for head in a.heads.split(","):
        if head not in HEADS:
            p.error(f"--heads: unknown head {head!r}; expected some of {','.join(HEADS)}")
    if a.clock == "cpu" and torch.device(a.device).type == "cuda":
        p.error("--clock cpu measures CPU time; use --clock wall on CUDA")
    return a


def main(argv=None):
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    memory = Memory(device)
    cpp = ops._cpp_module()
    result = dict(environment(device), clock=a.clock,
                  isa=cpp.isa() if cpp is not None and device.type == "cpu" else "", rows=[])
    rows = result["rows"]
    for dtype in (getattr(torch, d) for d in a.dtypes.split(",")):
        # the FLOP floor's rate: bench/roofline.py's peak, timed with this run's clock
        rate = roofline.peak(device, dtype, size=256 if a.smoke else 2048, seconds=0.1 if a.smoke else 0.5, clock=clock,
                    measure_gpu=True)["flops_per_s"]
        names = ops.available_backends(device, dtype)
        if a.backends:
            names = [n for n in names if n in a.backends.split(",")]
        for head in a.heads.split(","):
            H, V = HEADS[head]
            _, weight, ids = make_head(H, V, dtype, device)
            flat = bytes_as_fp32(weight)
            as_matrix = flat[: flat.numel() // 1024 * 1024].view(-1, 1024)  # all but < 1024 elements
            ones = torch.ones(1024, device=device, dtype=flat.dtype)
            for B in (int(b) for b in a.batch.split(",")):
                torch.manual_seed(B)
                hidden = torch.randn(B, H, device=device).to(dtype).requires_grad_()
                for backward in (False,) if a.no_backward else (False, True):
                    passes = 2 if backward else 1
                    fns = {"read_sum": flat.sum, "read_mv": lambda m=as_matrix, x=ones: torch.mv(m, x)}  # read floor
                    fns.update({name: (lambda name=name, h=hidden, w=weight, i=ids, b=backward: step(name, h, w, i, b))
                                for name in list(BASELINES) + names})
                    res = measure(fns, a.repeats, device, memory, clock=clock, collect=not a.smoke)
                    t_read = min(res.pop("read_sum")[0], res.pop("read_mv")[0])  # medians throughout
                    best_name = min(BASELINES, key=lambda n: res[n][0])
                    best = res[best_name][0]
                    floor = passes * max(t_read, 2 * B * V * H / rate)
                    load = load_average()
                    for name, (med, fastest, peak, n) in res.items():
                        rows.append(dict(load_average=load, head=head, H=H, V=V, dtype=str(dtype).replace("torch.", ""),
                                         B=B, backend=name, **{"pass": "fwd+bwd" if backward else "fwd"},
                                         repeats=n, median_ms=round(med * 1e3, 3), min_ms=round(fastest * 1e3, 3),
                                         read_ms=round(t_read * 1e3, 3), x_read=round(med / (passes * t_read), 3),
                                         gemm_flops_per_s=round(rate), floor_ms=round(floor * 1e3, 3),
                                         x_floor=round(med / floor, 3), best_torch=best_name,
                                         speedup_vs_best_torch=round(best / med, 3),
                                         max_speedup_vs_best_torch=round(best / floor, 3),
                                         peak_extra_mb=None if peak is None else round(peak / 2**20, 2)))
                    print_rows(result, rows[-len(res):])
            del weight, flat, as_matrix
            gc.collect()
    if a.csv:
        append_csv(a.csv, flat_rows(result, "rows"))
    if a.json:
        write_json(a.json, result, indent=1)
    return result


_HEADER = False


def print_rows(result, rows):
    global _HEADER
    if not _HEADER:
        print(f"# {result['machine']}, {result['threads']} threads, torch {result['versions']['torch']}, "
              f"isa {result['isa']}, {result['clock']} clock, load {result['load_average']}")
        print(f"{'head':>5} {'dtype':>8} {'B':>3} {'pass':>7} {'backend':>11} {'ms':>9} {'x read':>7} {'x floor':>7} "
              f"{'vs best torch':>13} {'bound':>6} {'peak MB':>8}")
        _HEADER = True
    for r in rows:
        peak = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        print(f"{r['head']:>5} {r['dtype']:>8} {r['B']:>3} {r['pass']:>7} {r['backend']:>11} {r['median_ms']:>9.2f} "
              f"{r['x_read']:>7.2f} {r['x_floor']:>7.2f} {r['speedup_vs_best_torch']:>12.2f}x "
              f"{r['max_speedup_vs_best_torch']:>5.2f}x {peak:>8}", flush=True)


if __name__ == "__main__":
    main()
