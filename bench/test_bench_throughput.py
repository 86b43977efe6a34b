"""pytest-benchmark cases of bench/throughput.py's scenarios on the embedded tiny model.

    pytest bench/test_bench_throughput.py --benchmark-only --benchmark-autosave          # record
    pytest bench/test_bench_throughput.py --benchmark-only --benchmark-compare           # compare
CI runs them once with --benchmark-disable (a smoke that also checks rdfast equals plain transformers).
"""
import argparse
import functools

import pytest
import throughput as T
import torch


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
@pytest.mark.parametrize("method", ["rdfast", "hf_batched"])
def test_scenario(benchmark, scenario, method):
    rm, items = workload(scenario)
    fn = T.run_rdfast if method == "rdfast" else T.run_hf_batched
    logp = benchmark(fn, rm, items)
    assert logp.shape == (len(items), 2)
    if method == "rdfast":  # the fast path must score exactly what plain transformers scores
        torch.testing.assert_close(logp.float(), T.run_hf_batched(rm, items).float(), atol=1e-5, rtol=0)


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
