"""What every benchmark records with its numbers: the machine they were measured on, the load, and the file."""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess

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


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when files differ), so a figure can be traced to the code."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict:
    """The versions a number depends on (torch's build decides the GEMM library, transformers the baseline)."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "triton", "diffusers"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment(device: torch.device | str | None = None) -> dict:
    """The one result schema every bench script records beside its numbers (issue 17): machine, threads, load,
    versions, git commit, date. Each script merges its own fields into this dict."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return {"machine": machine(device), "device_type": device.type, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_average": load_average(), "versions": versions(),
            "git_commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def append_csv(path, rows: list[dict]) -> None:
    """Append flat rows to ``path`` (one CSV per bench, a history of runs). The header is the union of the existing
    header and the new keys; when new keys appear the file is rewritten with the wider header (old rows keep blanks),
    through a temporary file so an interrupted write never clobbers the history."""
    rows = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in rows]
    old_rows, header = [], []
    if os.path.exists(path):
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            old_rows = list(reader)
    for r in rows:
        header += [k for k in r if k not in header]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(old_rows + rows)
    os.replace(tmp, path)


def flat_rows(result: dict, rows_key: str) -> list[dict]:
    """Each row of ``result[rows_key]`` with the run's environment fields beside it (nested values as JSON text)."""
    shared = {k: v for k, v in result.items() if k != rows_key and not isinstance(v, list)}
    shared.update({f"version_{k}": v for k, v in (result.get("versions") or {}).items()})
    shared.pop("versions", None)
    return [{**shared, **row} for row in result.get(rows_key, [])]
