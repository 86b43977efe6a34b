"""CUDA graphs for the fixed-shape denoiser step: capture once per input signature, replay afterwards.

A denoiser step at a fixed (batch, resolution) launches the same kernels every time; capturing it in a CUDA
graph removes the per-kernel launch overhead (large for small batches and many small layers). Search replays
the same step across rounds and branches, so each (batch, resolution) is captured once.

    runner = GraphRunner(fn)            # fn(*tensors) -> tensor or tuple of tensors
    out = runner(x, t, level, *cond)    # CUDA: copy into static inputs, replay, return clones; CPU: fn(...)

Static inputs are copied in on every call (so any tensors of the captured shapes may be passed: other
prompts, other noise levels), and outputs are cloned (so a later replay cannot overwrite what the caller
holds). ``enabled=False`` (or ``RDFAST_CUDA_GRAPHS=0`` in the environment) is the one switch that turns
capture off. Graphs never record autograd: callers use them under no_grad only (``Sampler`` does).
"""
from __future__ import annotations

import os

import torch


def graphs_available() -> bool:
    """True where CUDA graphs can be captured (a CUDA device) and the environment does not forbid them."""
    return torch.cuda.is_available() and os.environ.get("RDFAST_CUDA_GRAPHS", "1") != "0"


class GraphRunner:
    """Runs ``fn`` through one captured CUDA graph per input signature (shapes, dtypes, devices).

    Falls back to calling ``fn`` directly when disabled, when any input is not on CUDA, or when gradients
    are enabled. ``captures`` counts the graphs captured, ``replays`` the replays (for tests and reports).
    """

    def __init__(self, fn, enabled: bool = True, warmup: int = 2):
        self.fn = fn
        self.enabled = bool(enabled)
        self.warmup = warmup
        self._graphs: dict = {}
        self._pool = None
        self.captures = 0
        self.replays = 0

    def active_for(self, tensors) -> bool:
        return (self.enabled and graphs_available() and not torch.is_grad_enabled()
                and all(t.is_cuda for t in tensors))

    def __call__(self, *tensors):
        if not self.active_for(tensors):
            return self.fn(*tensors)
        key = tuple((tuple(t.shape), t.dtype, t.device, t.stride()) for t in tensors)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(tensors)
        graph, static_in, static_out, single = entry
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        self.replays += 1
        outs = tuple(o.clone() for o in static_out)
        return outs[0] if single else outs

    def _capture(self, tensors):
        static_in = tuple(t.detach().clone() for t in tensors)
        # Warm up on a side stream (lazy inits, cuBLAS workspaces, autotuning) before capturing, as PyTorch requires.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one memory pool shared by all shapes
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.fn(*static_in)
        single = isinstance(out, torch.Tensor)
        static_out = (out,) if single else tuple(out)
        self.captures += 1
        return graph, static_in, static_out, single

    def reset(self):
        """Drop every captured graph (e.g. after the denoiser's weights were replaced by new tensors)."""
        self._graphs.clear()
