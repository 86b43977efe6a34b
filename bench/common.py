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


def load_average() -> float | None:
    """The 1-minute load average: other jobs on the same cores slow every timing, so each row says how busy."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def write_json(path, obj, indent=2) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=indent)
