"""rdfast.diffusion: aligning generators with the reward model (ReFL) and searching with it (Search over Paths).

``import rdfast.diffusion`` is cheap: diffusers, transformers and peft load on first use.

    from rdfast.diffusion import ReFLTrainer, PairwiseReward, PointwiseReward, search_over_paths, pipeline_problem

| module | job |
|---|---|
| sampler.py   | noise levels, x0 prediction, update, exact re-noising, guidance, NFE: each in one place |
| pipelines/   | FLUX / SD3 / SD 1.5 / SDXL / Wan 2.1 (video) wrappers: prompts, noise, guided denoiser, VAE decode |
| graphs.py    | CUDA-graph capture and replay of the fixed-shape denoiser step |
| reward.py    | the reward model as a reward (images or videos): pairwise vs cached Best-of-N references, pointwise |
| refl.py      | ReFLTrainer: ReFL with memory-efficient backward |
| ema.py       | EMA of the trained weights (``ReFLTrainer(ema_decay=...)``) |
| search.py    | Search over Paths, Best-of-N, the search tree (JSON, figure) |
| gaussian_toy.py | the analytic Gaussian-mixture toy for search |
| testing.py   | tiny diffusers pipelines built from configs |
| cli.py       | ``rdfast refl`` and ``rdfast search`` |
"""
from .ema import EMA
from .gaussian_toy import toy_problem
from .graphs import GraphRunner
from .pipelines import adapt, load_pipeline
from .refl import ReFLConfig, ReFLTrainer
from .reward import PairwiseReward, PointwiseReward, rank_pairwise, reward_fn
from .sampler import NFE, Sampler, Schedule, UnsupportedScheduler, combine, guide, renoise, split
from .search import Problem, SearchResult, best_of_n, equal_nfe_k, pipeline_problem, search_nfe, search_over_paths

__all__ = [
    "Sampler", "Schedule", "NFE", "UnsupportedScheduler", "split", "combine", "renoise", "guide",
    "adapt", "load_pipeline",
    "GraphRunner",
    "PairwiseReward", "PointwiseReward", "reward_fn", "rank_pairwise",
    "ReFLTrainer", "ReFLConfig", "EMA",
    "search_over_paths", "best_of_n", "pipeline_problem", "search_nfe", "equal_nfe_k", "SearchResult", "Problem",
    "toy_problem",
]
