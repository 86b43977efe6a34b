"""pytest-benchmark smoke of ``bench/toy_alignment.py`` (``--smoke``: two ReFL updates per run on two prompts,
search on two prompts, with the shipped toy models). The real figures come from ``python bench/toy_alignment.py
--json ...``; this checks the plumbing, the report and the figures. Nothing here asserts timings or alignments.
"""
import json
import os

import pytest

# bench/toy_alignment.py (pytest puts this directory on sys.path)
from toy_alignment import main, merge

from rdfast.diffusion.testing import torch_threads


def test_toy_alignment_smoke(benchmark, tmp_path):
    path = tmp_path / "alignment.json"
    with torch_threads(1):
        report = benchmark.pedantic(main, args=(["--smoke", "--quiet", "--seeds", "0,1", "--search-seeds", "2", "--json", str(path)],), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    assert [(r["run"], r["seed"]) for r in saved["refl"]] == [(n, s) for n in ("control", "top2", "bottom2") for s in (0, 1)]
    summary = saved["refl_summary"]
    for name in ("control", "top2", "bottom2"):  # the mean over seeds is the rows' mean, the gain is over the base
        got = [r["aligned_alignment"] for r in saved["refl"] if r["run"] == name]
        assert summary[name]["aligned"] == got and abs(summary[name]["mean"] - sum(got) / 2) < 1e-12
        assert abs(summary[name]["gain"] - (summary[name]["mean"] - saved["base_alignment"])) < 1e-12
        assert abs(summary[name]["gain_over_control"] - (summary[name]["mean"] - summary["control"]["mean"])) < 1e-12
    assert {r["base_alignment"] for r in saved["refl"]} == {saved["base_alignment"]}  # one base, measured once
    for r in saved["refl"][:2]:  # the control, both seeds
        assert r["reward_model"] is None and r["reward_first"] == r["reward_last"] == 0.0
    for r in saved["refl"][2:]:
        assert r["reward_model"] == "toy:pairwise" and 0.0 < r["reward_first"] < 1.0 and 0.0 <= r["aligned_alignment"] <= 1.0
    search = saved["search"]
    assert search["verifier"] == "toy:verifier" and search["total_calls_bon"] <= search["total_calls_search"]
    assert search["config"]["seeds"] == saved["budgets"]["search"]["seeds"] == 2 and search["runs"] == 2 * 2  # 2 prompts
    for key in ("machine", "threads", "load_average", "git_commit", "seconds"):
        assert key in saved, key
    assert set(saved["figures"]) == {"base", "control", "top2", "bottom2"}
    assert all(os.path.getsize(p) > 0 for p in saved["figures"].values()) and report["seconds"] > 0

    # --merge: the same report split in two (as two invocations side by side would write it) merges back
    halves = []
    for k, keep in enumerate((lambda r: r["seed"] == 0, lambda r: r["seed"] == 1)):
        half = {**saved, "refl": [r for r in saved["refl"] if keep(r)], "search": saved["search"] if k == 0 else None}
        halves.append(tmp_path / f"half{k}.json")
        halves[-1].write_text(json.dumps(half))
    merged = main(["--merge", *map(str, halves), "--json", str(tmp_path / "merged.json")])
    assert merged["refl"] == saved["refl"] and merged["refl_summary"] == saved["refl_summary"]
    assert merged["search"] == saved["search"] and len(merged["invocations"]) == 2
    with pytest.raises(ValueError, match="appears twice"):  # the same run and seed from two invocations
        merge([str(halves[0]), str(halves[0])])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**saved, "base_alignment": saved["base_alignment"] + 0.5}))
    with pytest.raises(ValueError, match="base_alignment"):  # another experiment's report
        merge([str(halves[0]), str(other)])
    stranger = tmp_path / "stranger.json"
    stranger.write_text(json.dumps({"refl": []}))
    with pytest.raises(ValueError, match="not a toy_alignment report"):  # some other JSON
        merge([str(halves[0]), str(stranger)])
    with pytest.raises(SystemExit) as exit_:  # the CLI: one line, exit code 2, nothing written
        main(["--merge", str(halves[0]), str(other), "--json", str(tmp_path / "mixed.json")])
    assert exit_.value.code == 2 and not (tmp_path / "mixed.json").exists()


def test_toy_alignment_ema_smoke(tmp_path):
    """--ema-decay: the run reports the EMA weights' alignment and the last iterate's; decay 0 makes them the same
    weights. The report's folder is created; a bad decay is one CLI line (exit 2) before any work."""
    path = tmp_path / "new" / "ema.json"
    with torch_threads(1):
        main(["--smoke", "--quiet", "--runs", "bottom2", "--ema-decay", "0", "--json", str(path)])
    row = json.loads(path.read_text())["refl"][0]
    assert row["ema_decay"] == 0.0 and row["last_iterate_alignment"] == row["aligned_alignment"]
    with pytest.raises(SystemExit) as exit_:
        main(["--smoke", "--runs", "bottom2", "--ema-decay", "1", "--json", str(tmp_path / "bad" / "x.json")])
    assert exit_.value.code == 2 and not (tmp_path / "bad").exists()
