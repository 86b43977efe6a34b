"""pytest-benchmark cases of bench/throughput.py's scenarios on the embedded tiny model.

    pytest bench/test_bench_throughput.py --benchmark-only --benchmark-autosave          # record
    pytest bench/test_bench_throughput.py --benchmark-only --benchmark-compare           # compare
CI runs them once with --benchmark-disable (a smoke that also checks rdfast equals plain transformers).
"""
import argparse
import csv
import functools
import json
import os

import pytest
import throughput as T
import torch
from baselines import baseline_models

from rdfast.encoding import extended


@functools.lru_cache(maxsize=None)
def workload(scenario):
    from rdfast import RewardModel
    from rdfast.testing import tiny_checkpoint

    preset = T.PRESETS["tiny"]
    rm = RewardModel.from_pretrained(tiny_checkpoint(preset.family), device="cpu")
    data = T.scenario_inputs(scenario, preset)
    images = [data["images1"]] if data["images2"] is None else [data["images1"], data["images2"]]
    return rm, rm.encode(data["prompts"], images, preset.instruction, kind=data.get("kind", "image"))


@pytest.mark.parametrize("scenario", T.SCENARIOS)
@pytest.mark.parametrize("method", ["rdfast", "hf_batched", "hf_expert"])
def test_scenario(benchmark, scenario, method):
    rm, items = workload(scenario)
    fn = {"rdfast": T.run_rdfast, "hf_batched": T.run_hf_batched, "hf_expert": T.run_hf_expert}[method]
    logp = benchmark(fn, rm, items)
    assert logp.shape == (len(items), 2)
    if method == "rdfast":  # the fast path must score exactly what plain transformers scores
        torch.testing.assert_close(logp.float(), T.run_hf_batched(rm, items).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scenario", T.SCENARIOS)
def test_hf_expert_scores_as_rdfast_on_fresh_inputs(scenario):
    """The expert baseline (distinct media encoded once and handed to transformers as mm_encoder_outputs, 2-D
    head) is an independent plain-transformers path: it must give rdfast's log P (fp32: 1e-5), on fresh random
    images and prompts, under rdfast's thread policy too (the matched variant)."""
    rm, _ = workload(scenario)
    preset = T.PRESETS["tiny"]
    data = T.scenario_inputs(scenario, preset, seed=int(torch.randint(0, 2**30, (1,))))
    images = [data["images1"][:24]] if data["images2"] is None else [data["images1"][:24], data["images2"][:24]]
    items = rm.encode(data["prompts"][:24], images, preset.instruction, kind=data.get("kind", "image"))
    ours = T.run_rdfast(rm, items).float()
    stock, matched, _ = baseline_models(rm)
    torch.testing.assert_close(T.run_hf_expert(rm, items, model=stock).float(), ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(T.run_hf_expert(rm, items, model=matched, threads=True).float(), ours, atol=1e-5, rtol=0)


def test_stock_baselines_run_without_rdfast_cpu_fast_path():
    """rdfast loads CPU models onto its fast path; the stock baselines must not inherit it (they stand for plain
    transformers), and the matched one takes only the GEMM library path (packed linears; no fused MLP activations,
    no patch-conv rewrite)."""
    from rdfast import cpu_speed
    from rdfast.cpu_fused_mlp import FusedMLPForward
    from rdfast.cpu_packed import FastLinear

    def fused(model):
        return any(isinstance(m.__dict__.get("forward"), FusedMLPForward) for m in model.modules())

    rm, _ = workload("ref16")
    fast_classes = (FastLinear, cpu_speed.PatchConv2d, cpu_speed.PatchConv3d)
    assert any(isinstance(m, fast_classes) for m in rm.model.modules()) and fused(rm.model)  # what rdfast runs
    stock, matched, path = baseline_models(rm)
    assert not any(isinstance(m, fast_classes) for m in stock.modules()) and not fused(stock)
    assert any(isinstance(m, FastLinear) for m in matched.modules()), path
    assert not any(isinstance(m, (cpu_speed.PatchConv2d, cpu_speed.PatchConv3d)) for m in matched.modules())
    assert not fused(matched)
    assert any(isinstance(m, fast_classes) for m in rm.model.modules()) and fused(rm.model)  # rdfast's model as it was


def test_smoke_under_one_co_runner_writes_the_schema_and_leaves_no_process(tmp_path):
    """``--smoke --contention 1``: every method is reported with the new keys, the baselines compute at least
    rdfast's FLOPs, the roofline fraction is positive, the JSON and CSV are written, and the co-runner is gone."""
    out, table = tmp_path / "t.json", tmp_path / "t.csv"
    seed = str(int(torch.randint(0, 2**30, (1,))))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CI speed only: two stock threads beside the co-runner on a busy runner crawl
    try:
        T.main(["--smoke", "--scenarios", "ref16", "--contention", "1", "--seed", seed, "--json", str(out),
                "--csv", str(table)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["contention"] == 1 and result["dtype"] == "float32" and len(result["co_runner_pids"]) == 1
    for key in ("machine", "threads", "load_average", "versions", "git_commit", "date", "roofline"):
        assert key in result
    (row,) = result["scenarios"]
    for key in ("rdfast_pairs_per_s", "hf_batched_pairs_per_s", "naive_pairs_per_s", "hf_expert_pairs_per_s",
                "hf_expert_stock_pairs_per_s", "hf_expert_matched_pairs_per_s", "work_ratio", "fraction_of_roofline"):
        assert key in row
    assert row["hf_expert_pairs_per_s"] == max(row["hf_expert_stock_pairs_per_s"], row["hf_expert_matched_pairs_per_s"])
    assert min(row["work_ratio"].values()) >= 1 and row["work_ratio"]["naive"] > row["work_ratio"]["hf_expert"]
    assert 0 < row["fraction_of_roofline"] <= 1
    assert row["max_abs_logp_diff_vs_hf_expert"] <= 1e-5
    with open(table, newline="") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["ref16"]
    pid = result["co_runner_pids"][0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


def test_co_runners_stop_on_an_exception():
    from contention import co_runners

    with pytest.raises(KeyboardInterrupt):
        with co_runners(2) as pids:
            assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
            raise KeyboardInterrupt
    for p in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(p, 0)


def test_work_ratio_counts_padding():
    """hf_batched computes padded rows: its FLOPs grow when one item in a batch is longer, rdfast's by that
    item's own tokens only."""
    rm, items = workload("point64")
    base = T.method_flops(rm, items[:4])
    longer = [items[0], items[1], items[2], extended(items[3], [items[3].input_ids[-1]] * 40)]
    grown = T.method_flops(rm, longer)
    assert grown["hf_batched"] - base["hf_batched"] > 3 * (grown["rdfast"] - base["rdfast"]) > 0


def test_checklist_end_to_end_equals_separate_calls():
    """The checklist scenario's two end-to-end ways (one ``rm.ask``, one ``rm.score`` per pair) agree."""
    rm, _ = workload("checklist")
    images, questions = T.scenario_inputs("checklist", T.PRESETS["tiny"])["checklist"]
    asked = T.run_ask(rm, images[:3], questions, None)
    pairs = [(images[n], q) for n in range(3) for q in questions[:2]]
    separate = T.run_separate_calls(rm, pairs, None).view(3, 2)
    torch.testing.assert_close(asked[:, :2].log(), separate.log(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset_name", ["qwen3-vl-small", "qwen3.5-small"])
def test_small_presets_of_the_newer_families_score_as_plain_transformers(preset_name):
    """A smoke of the CPU-sized Qwen3-VL and Qwen3.5 presets (real vocabularies, 224 px images): the preset's model
    builds and loads, and rdfast scores one reference against two candidates (the ref16 layout, cut short: one
    shared prefix, equal-length suffixes) as plain padded transformers does (fp32: 1e-5 in log P)."""
    from rdfast.testing import random_images

    preset = T.PRESETS[preset_name]
    rm = T.load_model(argparse.Namespace(model=None, device="cpu", preset=preset_name), preset)
    ref, *cands = random_images(3, sizes=(preset.image_size,), seed=int(torch.randint(0, 2**30, (1,))))
    items = rm.encode(T.make_prompts(1, preset.prompt_words, 0) * 2, [[ref, ref], cands], preset.instruction)
    assert all(m.n_tokens == 49 for it in items for m in it.media)  # 224 px = 7 x 7 merged 32 px units
    torch.testing.assert_close(T.run_rdfast(rm, items).float(), T.run_hf_batched(rm, items).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset_name", ["qwen3-vl-8b", "qwen3.5-9b"])
def test_real_shape_presets_refuse_a_cpu_in_one_line(preset_name, capsys):
    with pytest.raises(SystemExit) as exit_:
        T.main(["--preset", preset_name, "--device", "cpu", "--csv", ""])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "GPU only" in err and preset_name in err
