"""Benchmark the fused yes-token head (rdfast.ops.token_logprobs) against torch full logits.

For each head (Qwen2-VL-7B-like H=3584, V=152064 and a small H=896, V=32000), dtype and batch size it
times every available backend and the baseline `log_softmax((hidden @ weight.T).float())`, forward
(no_grad, scoring) and forward+backward (gradient to hidden only: a frozen head), and measures peak extra
memory. The roofline is the time to read the weight once (a float32 sum over the weight's bytes, timed in
the same rounds); a pass that reads it n times (forward 1, forward+backward 2) is compared with n reads.
Times are medians of calls interleaved round-robin across the backends.

    python bench/head.py                    # full run, appends to bench/results/head.csv
    python bench/head.py --quick --json /tmp/head.json

Rows are tagged with the machine (CPU model or GPU name) so results from different machines never mix, and
with the 1-minute load average: on a shared machine other processes inflate the times.
Peak extra memory: on CUDA torch.cuda.max_memory_allocated; on CPU the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs) above the RSS before the call, with glibc's mmap threshold pinned so freed
buffers really leave. Nothing here asserts timings.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import json
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import load_average, machine  # noqa: E402
from rdfast import ops  # noqa: E402

HEADS = {"7b": (3584, 152064), "small": (896, 32000)}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "head.csv")
FIELDS = ["date", "machine", "device", "threads", "loadavg", "torch", "isa", "head", "H", "V", "dtype", "B", "backend", "pass",
          "repeats", "median_ms", "min_ms", "read_ms", "x_read", "speedup_vs_full", "peak_extra_mb"]


# ----------------------------------------------------------------------------------------------------
# Inputs and the baseline (also used by bench/test_bench_head.py)


def make_head(H, V, dtype, device="cpu", B=1, seed=0):
    """weight [V, H] ~ N(0, 1/H) filled in place (no fp32 temporary), hidden [B, H], ids [2] (yes, no)."""
    torch.manual_seed(seed)
    weight = torch.empty(V, H, dtype=dtype, device=device).normal_(0.0, H**-0.5)
    hidden = torch.randn(B, H, device=device).to(dtype)
    ids = torch.tensor([V // 3, V // 2], device=device)
    return hidden, weight, ids


def full_logits(hidden, weight, ids):
    """The baseline: [B, V] logits, then log_softmax. Returns (logp [B, K], lse [B]) like token_logprobs."""
    return torch.log_softmax((hidden @ weight.T).float(), dim=-1)[:, ids], None


def step(backend, hidden, weight, ids, backward):
    """One call of a backend ("full" is the baseline); with backward, gradient to hidden only."""
    if not backward:
        with torch.no_grad():
            return run_head(backend, hidden, weight, ids)
    hidden.grad = None
    logp, lse = run_head(backend, hidden, weight, ids)
    loss = logp.sum() if lse is None else logp.sum() + lse.sum()
    loss.backward()


def run_head(backend, hidden, weight, ids):
    if backend == "full":
        return full_logits(hidden, weight, ids)
    return ops.token_logprobs(hidden, weight, ids, backend=backend)


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


def measure(fns, repeats, device, memory, budget_s=5.0):
    """{name: (median s, min s, peak extra bytes, n)}. Calls are interleaved round-robin (one warm-up each,
    then one call of every function per round), so a load that changes during the run hits all of them alike.
    A function gets fewer than `repeats` calls when its warm-up says they would take more than budget_s, and a
    warm-up of a second or more (the slow baselines, nothing left to warm) counts as one of them."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, times, peak = {}, {name: [] for name in fns}, {name: None for name in fns}

    def call(name):
        gc.collect()
        memory.start()
        t0 = time.perf_counter()
        fns[name]()
        sync()
        times[name].append(time.perf_counter() - t0)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small head, B in {1, 4}, 2 repeats")
    p.add_argument("--heads", default="7b,small", help="comma list of: " + ",".join(HEADS))
    p.add_argument("--batch", default="1,4,16,64", help="comma list of batch sizes")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--backends", default=None, help="comma list (default: every available backend)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--csv", default=RESULTS, help="append rows here ('' to skip)")
    p.add_argument("--json", default=None, help="also write all rows to this JSON file")
    a = p.parse_args(argv)
    if a.quick:
        a.heads, a.batch, a.repeats = "small", "1,4", 2

    device = torch.device(a.device)
    memory = Memory(device)
    cpp = ops._cpp_module()
    tag = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine(device),
               device=device.type, threads=torch.get_num_threads(), torch=torch.__version__,
               isa=cpp.isa() if cpp is not None and device.type == "cpu" else "")
    rows = []
    for head in a.heads.split(","):
        H, V = HEADS[head]
        for dtype in (getattr(torch, d) for d in a.dtypes.split(",")):
            names = ops.available_backends(device, dtype)
            if a.backends:
                names = [n for n in names if n in a.backends.split(",")]
            _, weight, ids = make_head(H, V, dtype, device)
            flat = bytes_as_fp32(weight)
            for B in (int(b) for b in a.batch.split(",")):
                torch.manual_seed(B)
                hidden = torch.randn(B, H, device=device).to(dtype).requires_grad_()
                for backward in (False,) if a.no_backward else (False, True):
                    passes = 2 if backward else 1
                    fns = {"read": flat.sum}  # the roofline, measured beside every case
                    fns.update({name: (lambda name=name, h=hidden, w=weight, i=ids, b=backward: step(name, h, w, i, b))
                                for name in ["full"] + names})
                    results = measure(fns, a.repeats, device, memory)
                    t_read = results.pop("read")[0]  # medians throughout
                    load = load_average()
                    for name, (med, best, peak, n) in results.items():
                        rows.append(dict(tag, loadavg=load, head=head, H=H, V=V, dtype=str(dtype).replace("torch.", ""),
                                         B=B, backend=name, **{"pass": "fwd+bwd" if backward else "fwd"},
                                         repeats=n, median_ms=round(med * 1e3, 3), min_ms=round(best * 1e3, 3),
                                         read_ms=round(t_read * 1e3, 3), x_read=round(med / (passes * t_read), 3),
                                         speedup_vs_full=round(results["full"][0] / med, 3),
                                         peak_extra_mb=None if peak is None else round(peak / 2**20, 2)))
                    print_rows(rows[-len(results):])
            del weight, flat
            gc.collect()

    if a.csv:
        os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
        new = not os.path.exists(a.csv)
        with open(a.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


_HEADER = False


def print_rows(rows):
    global _HEADER
    if not _HEADER:
        print(f"# {rows[0]['machine']}, {rows[0]['threads']} threads, torch {rows[0]['torch']}, isa {rows[0]['isa']}")
        print(f"{'head':>5} {'dtype':>8} {'B':>3} {'pass':>7} {'backend':>7} {'ms':>9} {'x read':>7} "
              f"{'vs full':>7} {'peak MB':>8}")
        _HEADER = True
    for r in rows:
        peak = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        print(f"{r['head']:>5} {r['dtype']:>8} {r['B']:>3} {r['pass']:>7} {r['backend']:>7} {r['median_ms']:>9.2f} "
              f"{r['x_read']:>7.2f} {r['speedup_vs_full']:>6.2f}x {peak:>8}", flush=True)


if __name__ == "__main__":
    main()
