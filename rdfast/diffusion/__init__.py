"""rdfast.diffusion: aligning generators with the reward model (ReFL) and searching with it (Search over Paths).

``import rdfast.diffusion`` is cheap: diffusers and peft load on first use.

    from rdfast.diffusion import ReFLTrainer, PairwiseReward, PointwiseReward, search_over_paths, pipeline_problem

| module | job |
|---|---|
| sampler.py   | noise levels, x0 prediction, update, exact re-noising, guidance, NFE: each in one place |
| pipelines/   | FLUX / SD3 / SD 1.5 / SDXL / Wan 2.1 (video) wrappers: prompts, noise, guided denoiser, VAE decode |
| graphs.py    | CUDA-graph capture and replay of the fixed-shape denoiser step |
| reward.py    | the reward model as a reward (images or videos): pairwise vs cached Best-of-N references, pointwise |
| refl.py      | ReFLTrainer: ReFL with memory-efficient backward |
| search.py    | Search over Paths, Best-of-N, the search tree (JSON, figure) |
| gaussian_toy.py | the analytic Gaussian-mixture toy for search |
| testing.py   | tiny diffusers pipelines built from configs |
| cli.py       | ``rdfast refl`` and ``rdfast search`` |
"""
from importlib import import_module

_LAZY = {
    "Sampler": "sampler", "Schedule": "sampler", "NFE": "sampler", "UnsupportedScheduler": "sampler",
    "split": "sampler", "combine": "sampler", "renoise": "sampler", "guide": "sampler",
    "adapt": "pipelines", "load_pipeline": "pipelines",
    "GraphRunner": "graphs",
    "PairwiseReward": "reward", "PointwiseReward": "reward", "reward_fn": "reward", "rank_pairwise": "reward",
    "ReFLTrainer": "refl", "ReFLConfig": "refl",
    "search_over_paths": "search", "best_of_n": "search", "pipeline_problem": "search", "search_nfe": "search",
    "equal_nfe_k": "search", "SearchResult": "search", "Problem": "search",
    "toy_problem": "gaussian_toy",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
