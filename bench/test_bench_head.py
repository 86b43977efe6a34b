"""pytest-benchmark cases for the yes-token head (small shapes: `pytest bench --benchmark-disable` is a
few-second smoke), the plain-torch baselines against a float64 reference, and bench/head.py's --smoke run.
Real numbers come from bench/head.py. Nothing here asserts timings."""
import json

import pytest
import torch
from head import BASELINES, main, make_head, run_head, step  # bench/head.py (pytest puts this directory on sys.path)

from rdfast import ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [(dtype, backend) for dtype in (torch.float32, torch.bfloat16)
         for backend in list(BASELINES) + ops.available_backends(DEVICE, dtype)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # on log P: fp32 rounding; bf16 logits carry ~3 digits


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_matches_float64(baseline, dtype):
    """The plain-torch baselines compute log P and the logsumexp (and their gradient to hidden) of a float64
    reference on the same fresh random inputs, within the dtype's tolerance. In bf16 they round the logits
    themselves to bf16 (as a model's lm_head does): fine for logits of a few units, not for |z| >= 4."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    hidden, weight, _ = make_head(96, 3001, dtype, B=5, seed=seed)
    hidden.requires_grad_()  # logits ~ N(0, 1): bf16 logits (the baselines') round by up to 2^-8 relative
    ids = torch.randint(0, 3001, (3,))
    logp, lse = run_head(baseline, hidden, weight, ids)
    (logp.sum() + lse.sum()).backward()
    h64 = hidden.detach().double().requires_grad_()
    z = h64 @ weight.double().T
    ref_lse = torch.logsumexp(z, dim=1)
    ref = z[:, ids] - ref_lse[:, None]
    (ref.sum() + ref_lse.sum()).backward()
    tol = TOL[dtype]
    assert logp.dtype == torch.float32 and logp.shape == (5, 3), f"seed {seed}"
    assert (logp.double() - ref).abs().max() < tol, f"seed {seed}"
    assert (lse.double() - ref_lse).abs().max() < tol * 10, f"seed {seed}"  # lse ~ 8: relative rounding
    assert (hidden.grad.double() - h64.grad).abs().max() < tol * 10, f"seed {seed}"


def test_smoke_run_records_the_schema(tmp_path):
    """bench/head.py --smoke: every method on a tiny head, rows appended to the CSV with the environment fields
    and written as JSON, each with its speedup over the faster plain-torch formulation and the bound."""
    csv_path, json_path = tmp_path / "head.csv", tmp_path / "head.json"
    result = main(["--smoke", "--dtypes", "float32", "--batch", "4", "--csv", str(csv_path), "--json", str(json_path)])
    saved = json.loads(json_path.read_text())
    for key in ("machine", "threads", "load_average", "versions", "git_commit", "date", "clock", "rows"):
        assert key in saved
    rows = saved["rows"]
    assert len(rows) == len(result["rows"]) == 2 * (len(BASELINES) + len(ops.available_backends(DEVICE)))
    for r in rows:
        assert r["best_torch"] in BASELINES and r["median_ms"] > 0 and r["floor_ms"] > 0
        if r["backend"] == r["best_torch"]:
            assert r["speedup_vs_best_torch"] == 1.0
    header = csv_path.read_text().splitlines()[0].split(",")
    assert {"machine", "git_commit", "version_torch", "backend", "speedup_vs_best_torch", "floor_ms"} <= set(header)
