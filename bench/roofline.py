"""The GEMM roofline of this machine: the fastest matrix-multiply rate any path reaches, measured now.

    python bench/roofline.py                      # fp32 and bf16, torch's thread count
    python bench/roofline.py --threads 1 --size 1024

CPU: large square matmuls through torch.mm (MKL or oneDNN, as torch's build picks) and through oneDNN's
packed-weight linear (torch.ops.mkldnn._linear_pointwise on a weight from _reorder_linear_weight, private
ops: absent on some builds, then skipped); the peak is the faster. GPU: bench/common.py's dense figure
(GPU_PEAKS) for bf16/fp16; otherwise none, or torch.mm measured when asked (``measure_gpu``, the head bench's
FLOP floor). bench/throughput.py divides rdfast's FLOPs by this peak.
"""
from __future__ import annotations

import argparse
import time

import torch

from common import gpu_peaks, machine


def _rate(fn, flops: float, seconds: float, clock=time.perf_counter, sync=lambda: None) -> float:
    """Best FLOP/s of ``fn`` over a few timed calls (``clock``: wall time, or CPU time for 1-thread CPU-time
    benches), after one warm-up call; ``sync`` waits for a GPU."""
    fn()
    best, spent = 0.0, 0.0
    while spent < seconds:
        sync()
        t0 = clock()
        fn()
        sync()
        dt = max(clock() - t0, 1e-9)
        spent += dt
        best = max(best, flops / dt)
    return best


def _onednn_linear(a: torch.Tensor, w: torch.Tensor):
    """oneDNN's packed-weight linear a @ w.T, or None when this torch lacks the private ops."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, a.shape[0])
        torch.ops.mkldnn._linear_pointwise(a[:2], packed, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    return lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")


def cpu_peak(dtype: torch.dtype, threads: int | None = None, size: int = 2048, seconds: float = 0.5,
             clock=time.perf_counter) -> dict:
    """{"flops_per_s": the best path's rate, "path": its name, "paths": {name: rate}} for size^3 matmuls
    in ``dtype`` on ``threads`` intra-op threads (default: torch's setting, restored afterwards)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=g).to(dtype)
        w = torch.randn(size, size, generator=g).to(dtype)
        flops = 2.0 * size**3
        paths = {"torch.mm": _rate(lambda: torch.mm(a, w.t()), flops, seconds, clock)}
        onednn = _onednn_linear(a, w) if torch.backends.mkldnn.is_available() else None
        if onednn is not None:
            paths["onednn_linear"] = _rate(onednn, flops, seconds, clock)
        threads_used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    path = max(paths, key=paths.get)
    return {"flops_per_s": paths[path], "path": path, "paths": paths, "threads": threads_used, "size": size,
            "dtype": str(dtype).removeprefix("torch.")}


def peak(device: torch.device, dtype: torch.dtype, threads: int | None = None, size: int = 2048,
         seconds: float = 0.5, clock=time.perf_counter, measure_gpu: bool = False) -> dict | None:
    """The roofline for ``device``: measured on CPU, the dense table figure on a known GPU (bf16/fp16); otherwise
    torch.mm measured when ``measure_gpu``, else None."""
    if device.type == "cpu":
        return cpu_peak(dtype, threads, size, seconds, clock)
    peaks = gpu_peaks(machine(device))
    if peaks is not None and dtype in (torch.bfloat16, torch.float16):
        return {"flops_per_s": peaks[0], "path": "GPU_PEAKS (dense)", "paths": {}, "threads": None, "size": None,
                "dtype": str(dtype).removeprefix("torch.")}
    if not measure_gpu:
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a, w = (torch.randn(size, size, generator=g, device=device).to(dtype) for _ in range(2))
    rate = _rate(lambda: torch.mm(a, w.t()), 2.0 * size**3, seconds, clock, torch.cuda.synchronize)
    return {"flops_per_s": rate, "path": "torch.mm (measured)", "paths": {"torch.mm": rate}, "threads": None,
            "size": size, "dtype": str(dtype).removeprefix("torch.")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args(argv)
    for dtype in (torch.float32, torch.bfloat16):
        r = cpu_peak(dtype, args.threads, args.size, args.seconds)
        rates = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in r["paths"].items())
        print(f"{r['dtype']:9s} {r['threads']} threads: peak {r['flops_per_s'] / 1e9:.0f} GFLOP/s ({rates})")


if __name__ == "__main__":
    main()
