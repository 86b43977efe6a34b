"""pytest-benchmark smoke of ``bench/toy_alignment.py`` (``--smoke``: two ReFL updates per run on two prompts,
search on two prompts, with the shipped toy models). The real figures come from ``python bench/toy_alignment.py
--json ...``; this checks the plumbing, the report and the figures. Nothing here asserts timings or alignments.
"""
import json
import os

# bench/toy_alignment.py (pytest puts this directory on sys.path)
from toy_alignment import main

from rdfast.diffusion.testing import torch_threads


def test_toy_alignment_smoke(benchmark, tmp_path):
    path = tmp_path / "alignment.json"
    with torch_threads(1):
        report = benchmark.pedantic(main, args=(["--smoke", "--quiet", "--json", str(path)],), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    assert [r["run"] for r in saved["refl"]] == ["control", "top2", "bottom2"]
    assert {r["base_alignment"] for r in saved["refl"]} == {saved["base_alignment"]}  # one base, measured once
    control = saved["refl"][0]
    assert control["reward_model"] is None and control["reward_first"] == control["reward_last"] == 0.0
    for r in saved["refl"][1:]:
        assert r["reward_model"] == "toy:pairwise" and 0.0 < r["reward_first"] < 1.0 and 0.0 <= r["aligned_alignment"] <= 1.0
    search = saved["search"]
    assert search["verifier"] == "toy:verifier" and search["total_calls_bon"] <= search["total_calls_search"]
    for key in ("machine", "threads", "load_average", "git_commit", "seconds"):
        assert key in saved, key
    assert set(saved["figures"]) == {"base", "control", "top2", "bottom2"}
    assert all(os.path.getsize(p) > 0 for p in saved["figures"].values()) and report["seconds"] > 0
