"""pytest-benchmark smoke of the toy RewardDance study (``--smoke``: a tiny generator trained for two steps, one
reward-model size with two steps per paradigm, two ReFL updates per RM, search on two prompts).

The real figures come from ``python bench/rewarddance_toy.py --json ... --out DIR``; this checks the plumbing, the
report's keys and types, the figures, and that a second run reads every stage back from its cache (nothing
retrained). Nothing here asserts timings or alignments.
"""
import json

# bench/rewarddance_toy.py (pytest puts this directory on sys.path)
from rewarddance_toy import main

from rdfast.diffusion.testing import torch_threads


def test_rewarddance_toy_smoke(benchmark, tmp_path):
    path, out = tmp_path / "study.json", tmp_path / "stages"
    argv = ["--smoke", "--out", str(out), "--json", str(path), "--threads", "1"]
    with torch_threads(1):
        report = benchmark.pedantic(main, args=(argv,), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    for key in ("rm", "refl", "reference", "search", "base_alignment", "seconds", "machine", "threads",
                "load_average", "versions", "git_commit", "date"):
        assert key in saved, key
    assert [r["paradigm"] for r in saved["rm"]] == ["pairwise", "pointwise", "regressive"]
    for r in saved["rm"]:
        assert isinstance(r["params"], int) and r["params"] > 100_000 and 0 <= r["id_acc"] <= 1 and 0 <= r["ood_acc"] <= 1
    assert [(r["rm_paradigm"], r["reference"]) for r in saved["refl"]] == \
        [("pairwise", "top2"), ("regressive", None), ("pairwise", "bottom2")]
    for r in saved["refl"]:
        assert isinstance(r["rm_params"], int) and r["base_alignment"] == saved["base_alignment"]
        assert 0 <= r["aligned_alignment"] <= 1 and r["reward_std_last"] >= 0
    assert saved["reference"]["top2_alignment"] == saved["refl"][0]["aligned_alignment"]
    assert saved["reference"]["bottom2_alignment"] == saved["refl"][2]["aligned_alignment"]
    s = saved["search"]
    for key in ("search_alignment", "bon_alignment"):
        assert 0 <= s[key] <= 1
    # equal total calls: Best-of-N never more, and within one of its samples' cost (T + 1 with T = 4 steps)
    total_search = s["denoiser_calls_search"] + s["verifier_calls_search"]
    assert total_search - 5 < s["denoiser_calls_bon"] + s["verifier_calls_bon"] <= total_search
    assert s["verifier_calls_bon"] == s["bon_k"] and s["denoiser_calls_bon"] == 4 * s["bon_k"]
    for figure in saved["figures"].values():
        assert (tmp_path / figure.rsplit("/", 1)[-1]).stat().st_size > 1000
    assert not any(v["cached"] for v in saved["stages"].values()) and saved["seconds"] > 0

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "study.json"}
    with torch_threads(1):
        again = main(argv)  # every stage cached: read back, nothing retrained or rewritten
    assert all(v["cached"] for v in again["stages"].values())
    assert {k: v["seconds"] for k, v in again["stages"].items()} == {k: v["seconds"] for k, v in report["stages"].items()}
    assert again["refl"] == report["refl"] and again["search"] == report["search"] and again["rm"] == report["rm"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "study.json"} == stamps
