"""pytest-benchmark smoke of the synthetic reward-model benchmark (``--smoke``: a few steps of each paradigm).

The real figures come from ``python bench/train_synthetic.py --json ...``; this only checks the plumbing and
the report's shape. Nothing here asserts timings or accuracies.
"""
import json

# bench/train_synthetic.py (pytest puts this directory on sys.path)
from train_synthetic import main


def test_train_synthetic_smoke(benchmark, tmp_path):
    path = tmp_path / "report.json"
    report = benchmark.pedantic(main, args=(["--smoke", "--json", str(path)],), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    keys = {"generative_pairwise_acc", "generative_pointwise_acc", "regressive_acc"}
    assert keys <= set(saved) and keys == set(saved["ood"]) and saved["steps"] == 2
    assert all(0.0 <= saved[k] <= 1.0 and 0.0 <= saved["ood"][k] <= 1.0 for k in keys)
    assert report["seconds"] > 0 and "device" in saved and path.with_suffix(".png").stat().st_size > 1000
