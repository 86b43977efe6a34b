"""pytest-benchmark cases for rdfast.diffusion (tiny models: ``pytest bench --benchmark-disable`` is a
few-second smoke). Real numbers come from bench/refl_memory.py and bench/search.py. Nothing here asserts
timings."""
import functools
import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import refl_memory  # noqa: E402  bench/refl_memory.py (pytest puts this directory on sys.path)
import search as search_bench  # noqa: E402  bench/search.py

from rdfast.diffusion.testing import torch_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def motion(videos, prompts):
    return (videos[:, 1:] - videos[:, :-1]).abs().mean(dim=(1, 2, 3, 4))


@functools.lru_cache(maxsize=None)
def trainer(memory_efficient, pipeline="flux"):
    """A tiny ReFL trainer at 32 px: FLUX rewarded for brightness, or Wan (9 frames) for motion."""
    from rdfast.diffusion.refl import ReFLTrainer
    from rdfast.diffusion.testing import tiny_pipeline

    video = dict(num_frames=9) if pipeline == "wan" else {}
    return ReFLTrainer(tiny_pipeline(pipeline), motion if video else brightness, height=32, width=32, num_steps=4,
                       grad_steps=2, late_range=(0.5, 1.0), lora_rank=4, memory_efficient=memory_efficient, seed=0,
                       **video)


@pytest.mark.parametrize("memory_efficient", [True, False], ids=["rdfast", "naive"])
def test_refl_step(benchmark, memory_efficient):
    tr = trainer(memory_efficient)
    benchmark.group = "refl step tiny flux 32px"
    info = benchmark(tr.step, ["a red fox", "a blue car"])
    assert info["stop_step"] in (2, 3)


def test_refl_memory_tracker_smoke():
    """The benchmark's tensor tracker on one tiny ReFL loss + backward, in process (the script uses subprocesses)."""
    peaks = {}
    for me in (False, True):
        tr = trainer(me)
        tr.optimizer.zero_grad(set_to_none=True)
        tr.generator.manual_seed(1)
        with refl_memory.TensorPeak() as tracked:
            loss, _ = tr.loss(["a red fox", "a blue car"])
            loss.backward()
        peaks[me] = tracked.peak
        assert tracked.peak > 0 and tracked.current <= tracked.peak
    assert peaks[True] <= peaks[False]  # at 32 px the peak may sit in text encoding, before any backward


def test_refl_memory_smoke(tmp_path):
    """bench/refl_memory.py --smoke: the naive, diffusers-checkpointing and rdfast paths each in a subprocess, the
    same gradient from all three, the result schema in the JSON and one CSV row per path (about 15 s)."""
    csv_path, json_path = tmp_path / "refl.csv", tmp_path / "refl.json"
    refl_memory.main(["--smoke", "--csv", str(csv_path), "--json", str(json_path)])
    out = json.loads(json_path.read_text())
    assert {"machine", "threads", "load_average", "versions", "git_commit", "date"} <= set(out)
    rows = {r["path"]: r for r in out["rows"]}
    assert list(rows) == ["naive", "diffusers", "rdfast"]
    assert rows["diffusers"]["vae_checkpointing"] is True and rows["naive"]["vae_checkpointing"] is False
    for r in rows.values():
        assert r["grad_cosine_vs_naive"] > 1 - 1e-6 and r["peak_bytes"] > 0 and r["step_cpu_seconds"] > 0
    assert out["peak_ratio_vs_diffusers"] == rows["rdfast"]["peak_bytes"] / rows["diffusers"]["peak_bytes"]
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 4 and {"path", "peak_ratio_vs_diffusers", "git_commit"} <= set(lines[0].split(","))


@pytest.mark.parametrize("memory_efficient", [True, False], ids=["rdfast", "naive"])
def test_video_refl_step(benchmark, memory_efficient):
    tr = trainer(memory_efficient, "wan")
    benchmark.group = "refl step tiny wan 32px 9 frames"
    info = benchmark(tr.step, ["a red fox", "a blue car"])
    assert info["stop_step"] in (2, 3)


def test_video_search(benchmark):
    from rdfast.diffusion.search import pipeline_problem, search_over_paths
    from rdfast.diffusion.testing import tiny_pipeline

    problem = pipeline_problem(tiny_pipeline("wan"), "a red fox", num_steps=6, height=32, width=32, num_frames=9,
                               guidance_scale=3.0)
    benchmark.group = "search tiny wan 32px 9 frames"
    res = benchmark.pedantic(search_over_paths, args=(problem, motion),
                             kwargs=dict(n=2, m=2, start_step=2, delta_f=1, delta_b=2, progress=False),
                             rounds=1, iterations=1)
    assert res.best_image.shape == (9, 3, 32, 32)


def test_search_vs_best_of_n(benchmark):
    benchmark.group = "search toy"
    row = benchmark.pedantic(search_bench.compare, args=(8, 12, 2, 4, 6, 1, 3), rounds=1, iterations=1)
    assert row["seeds"] == 8
    # the headline baseline has equal total calls (denoiser + verifier), within one Best-of-N sample's cost
    assert row["total_calls_bon"] <= row["total_calls_search"] < row["total_calls_bon"] + 12 + 1
    verifier = row["baselines"]["equal_verifier_calls"]
    assert verifier["verifier_calls"] == row["verifier_calls_search"] and verifier["denoiser_calls"] > row["nfe_search"]
    assert set(row) >= {"search_mean_reward", "bon_mean_reward", "nfe_search", "nfe_bon", "seeds"}
