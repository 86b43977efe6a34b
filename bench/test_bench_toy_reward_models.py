"""pytest-benchmark smoke of the toy reward-model study (``--smoke``: two steps of each paradigm, one size).

The real figures come from ``python bench/toy_reward_models.py --out DIR --json ...``; this checks the plumbing,
the report's shape and that a second run reads every stage back from its cache. Nothing here asserts timings
or accuracies.
"""
import json

# bench/toy_reward_models.py (pytest puts this directory on sys.path)
from toy_reward_models import main


def test_toy_reward_models_smoke(benchmark, tmp_path):
    path, out = tmp_path / "report.json", tmp_path / "stages"
    argv = ["--smoke", "--sizes", "small", "--out", str(out), "--json", str(path)]
    report = benchmark.pedantic(main, args=(argv,), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    assert [r["paradigm"] for r in saved["rm"]] == ["pairwise", "pointwise", "regressive"]
    for r in saved["rm"]:
        assert r["params"] > 100_000 and 0.0 <= r["id_acc"] <= 1.0 and 0.0 <= r["ood_acc"] <= 1.0
    assert "in_domain_auc" in saved["rm"][1] and report["seconds"] > 0 and "device" in saved
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = main(argv)  # every stage cached: read back, nothing retrained or rewritten
    assert again["rm"] == report["rm"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "data.json"} == \
        {p: t for p, t in stamps.items() if p.name != "data.json"}
