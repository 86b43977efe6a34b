"""What every benchmark records with its numbers: the machine they were measured on, the load, and the file."""
from __future__ import annotations

import json
import os
import platform
import re

import torch


def machine(device: torch.device | str | None = None) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses (results are only comparable within one)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = re.search(r"model name\s*:\s*(.+)", fh.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


# Per-GPU ceilings, matched by substring of torch.cuda.get_device_name (first match wins), in one place:
# (dense bf16 matrix FLOP/s, HBM bytes/s). Dense, never the 2:4-sparse figure (twice as high).
GPU_PEAKS = {
    "H200": (790e12, 4.3e12),  # measured on an H200 (torch): 8192^3 bf16 matmul 769-798 TFLOP/s; D2D copy 4.3 TB/s
    "H100 PCIe": (756e12, 2.0e12),  # NVIDIA H100 datasheet, PCIe card: dense bf16 756 TFLOP/s, HBM2e 2.0 TB/s
    "H100": (989e12, 3.35e12),  # NVIDIA H100 datasheet, SXM: dense bf16 989 TFLOP/s, HBM3 3.35 TB/s
}


def gpu_peaks(name: str) -> tuple[float, float] | None:
    """(dense bf16 FLOP/s, HBM bytes/s) of the GPU called ``name``, or None when it is not in GPU_PEAKS."""
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            return peaks
    return None


def load_average() -> float | None:
    """The 1-minute load average: other jobs on the same cores slow every timing, so each row says how busy."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def write_json(path, obj, indent=2) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=indent)
