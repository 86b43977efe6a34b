"""Smoke of the reward-serving benchmark (bench/serve.py) on the embedded tiny model: a real server in a
subprocess, clients in another process, one tiny group. Checks the plumbing, the report's shape and that the
server scored every item as in-process scoring does; nothing here asserts timings."""
import json

# bench/serve.py (pytest puts this directory on sys.path)
from serve import main


def test_serve_benchmark_smoke(benchmark, tmp_path):
    path = tmp_path / "serve.json"
    argv = ["--preset", "tiny", "--concurrency", "1,2", "--groups", "1", "--group-size", "4", "--repeats", "1",
            "--json", str(path)]
    benchmark.pedantic(main, args=(argv,), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    modes = sorted((r["mode"], r["concurrency"]) for r in saved["rows"])
    assert modes == [("batched", 1), ("batched", 2), ("in_process", 1), ("unbatched", 1), ("unbatched", 2)]
    assert all(r["items"] == 4 and r["items_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in saved["rows"])
    assert saved["max_abs_logp_diff_vs_in_process"] <= 1e-5  # float32, on log P(yes)
    assert {"device", "torch", "load_average"} <= set(saved)
    unbatched = [r for r in saved["rows"] if r["mode"] == "unbatched"]
    assert all(r["mean_items_per_engine_call"] == 1 for r in unbatched)  # --max-batch 1 really is off
