"""pytest-benchmark cases for the yes-token head (small shapes: `pytest bench --benchmark-disable` is a
few-second smoke). Real numbers come from bench/head.py. Nothing here asserts timings."""
import pytest
import torch
from head import make_head, step  # bench/head.py (pytest puts this directory on sys.path)

from rdfast import ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [(dtype, backend) for dtype in (torch.float32, torch.bfloat16)
         for backend in ["full"] + ops.available_backends(DEVICE, dtype)]


@pytest.mark.parametrize("dtype,backend", CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_head(benchmark, dtype, backend, B, backward):
    hidden, weight, ids = make_head(256, 8000, dtype, DEVICE, B=B)
    hidden.requires_grad_()
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)

    def run():
        step(backend, hidden, weight, ids, backward)
        sync()

    benchmark.group = f"head {dtype} B={B} {'fwd+bwd' if backward else 'fwd'}"
    benchmark(run)
