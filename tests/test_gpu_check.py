"""bench/gpu_check.sh on CPU: the dry run resolves every step and writes the real layout within the budgets.

The GPU machine is lent rarely (about 15 minutes, 10 per command, 8 files back from one folder): this is what
keeps the script that runs there working between loans.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = ["prereq", "head_tests", "head_bench", "throughput", "varlen", "diffusion", "gpu_tests"]
FILES = {"summary.txt", "summary.json", "head_bench.json", "throughput.json", "varlen.json", "diffusion.json",
         "logs.tar.gz"}
LIMIT_S = 480  # 8 minutes of the device's 10 per command

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(*args, env=None, timeout=170):
    env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def budgets():
    r = run("--print-budget")
    assert r.returncode == 0, r.stderr
    pairs = [line.split() for line in r.stdout.splitlines()]
    table = {name: int(secs) for name, secs in pairs}
    return table


def test_budgets_fit_one_command():
    table = budgets()
    steps = {k: v for k, v in table.items() if k not in ("total", "limit")}
    assert list(steps) == STEPS
    assert table["limit"] == LIMIT_S
    assert sum(steps.values()) == table["total"] <= LIMIT_S, table
    assert all(0 < v <= 120 for v in steps.values()), steps  # no step may eat the others


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    r = run("--dry-run", str(out))
    return r, out


def test_dry_run_layout(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    entries = list(out.iterdir())
    assert len(entries) <= 8 and all(p.is_file() for p in entries), entries  # 8 files come back, no folders
    assert {p.name for p in entries} == FILES
    assert all(p.stat().st_size < 16 * 2**20 for p in entries)
    assert "DRY RUN" in (out / "summary.txt").read_text()
    assert "DRY RUN" in r.stdout  # the one-screen summary is printed


def test_dry_run_summary(dry_run):
    _, out = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert {s["name"]: s["budget_s"] for s in summary["steps"]} == {k: v for k, v in budgets().items() if k in STEPS}
    assert summary["budget_sum_s"] == sum(s["budget_s"] for s in summary["steps"]) <= LIMIT_S
    for s in summary["steps"]:
        assert s["status"] == "ok", s
        assert s["seconds"] is not None and s["seconds"] < s["budget_s"], s
    # rdfast.kernels came from this checkout's kernels/ folder, through the script's own mapping
    assert os.path.realpath(summary["env"]["kernels"]).startswith(str(REPO / "kernels"))
    for name in ("head_bench", "throughput", "varlen", "diffusion"):
        result = json.loads((out / f"{name}.json").read_text())
        assert result["step"] == name and result["dry_run"] is True and result["status"] == "ok"
        assert result["parts"], name
    # the throughput step resolved the 3B-class model (on the meta device) and the benchmark's flags
    model = json.loads((out / "throughput.json").read_text())["parts"]["model"]
    assert model["device"] == "meta" and model["params"] > 2.5e9


def test_a_failing_or_hanging_step_is_recorded_and_the_rest_runs(tmp_path):
    r = run("--dry-run", str(tmp_path),
            env={"GPU_CHECK_STEPS": "head_tests,head_bench,diffusion",
                 "GPU_CHECK_INJECT": "prereq:pass,head_tests:fail,head_bench:hang,diffusion:fail",
                 "GPU_CHECK_BUDGET": "head_bench=2"}, timeout=90)
    assert r.returncode != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"prereq": "ok", "head_tests": "failed", "head_bench": "timeout", "throughput": "skipped",
                      "varlen": "skipped", "diffusion": "failed", "gpu_tests": "skipped"}, status
    notes = {s["name"]: s["note"] for s in summary["steps"]}
    assert "injected failure" in notes["head_tests"] and "timed out after 2 s" in notes["head_bench"]
    assert {p.name for p in tmp_path.iterdir()} == FILES
