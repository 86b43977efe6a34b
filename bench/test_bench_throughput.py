"""pytest-benchmark cases of bench/throughput.py's scenarios on the embedded tiny model.

    pytest bench/test_bench_throughput.py --benchmark-only --benchmark-autosave          # record
    pytest bench/test_bench_throughput.py --benchmark-only --benchmark-compare           # compare
CI runs them once with --benchmark-disable (a smoke that also checks rdfast equals plain transformers).
"""
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
