"""Search over Paths with the toy pointwise verifier against Best-of-N at equal compute (issue 13, deliverable 4).

For every prompt and seed: ``rdfast.diffusion.search_over_paths`` on the toy generator with the verifier
(``PointwiseReward``), then Best-of-N from independent noise with K chosen by ``rdfast.diffusion.search`` for equal
total calls (denoiser evaluations + verifier evaluations, each per sample; the headline) and for equal verifier
calls. Each method's best image is read by the oracle: alignment = the fraction of (prompt, seed) whose best
image the oracle reads as its prompt. Calls are counted while running and checked against the formulas.

    from rdfast.toyworld import search_study
    row = search_study.run_search("toy:generator", "toy:verifier", search_study.SEARCH_BUDGETS["full"])
"""
from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm

from ..diffusion.pipelines import load_pipeline
from ..diffusion.reward import PointwiseReward
from ..diffusion.search import (
    best_of_n,
    best_of_n_calls,
    equal_total_calls_k,
    equal_verifier_calls_k,
    pipeline_problem,
    search_calls,
    search_over_paths,
    total_calls,
)
from ..model import RewardModel
from .generator import SAMPLE_STEPS
from .oracle import is_aligned
from .world import SIZE, prompts

SEARCH_BUDGETS = {
    # 27 prompts x 2 seeds; per (prompt, seed) search spends 80 denoiser + 16 verifier calls, Best-of-5 85 in all
    "full": dict(num_steps=SAMPLE_STEPS, n=2, m=2, start_step=8, delta_f=2, delta_b=4, seeds=2, prompts=None),
    "smoke": dict(num_steps=4, n=2, m=2, start_step=2, delta_f=1, delta_b=2, seeds=1, prompts=2),
}
SETTINGS = ("n", "m", "start_step", "delta_f", "delta_b")


def run_search(generator, verifier, budget: dict, progress: bool = True, log=sys.stderr) -> dict:
    """Search over Paths vs Best-of-N on the in-domain prompts (``budget["prompts"]`` caps them) x seeds; returns
    plain data (alignments, calls per (prompt, seed) run, K) plus ``images`` / ``prompts``: the best image of each
    method per run, for a picture."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    pipe = load_pipeline(generator, device="cpu")
    reward = PointwiseReward(RewardModel.from_pretrained(verifier, device="cpu"))
    texts = [p.text for p in prompts("in_domain")[:budget.get("prompts")]]
    T = budget["num_steps"]
    settings = {k: budget[k] for k in SETTINGS}
    hits = {"search": 0, "bon": 0, "bon_equal_verifier": 0}
    calls, best, shown = {}, {name: [] for name in hits}, []
    runs = [(t, s) for t in texts for s in range(budget["seeds"])]
    for text, seed in tqdm(runs, desc="search vs Best-of-N", unit="run", disable=not progress, file=log):
        problem = pipeline_problem(pipe, text, num_steps=T, height=SIZE, width=SIZE, graphs=False)
        g = problem.sampler.evals_per_step
        expected = search_calls(T, **settings, evals_per_step=g)
        res = search_over_paths(problem, reward, **settings, generator=torch.Generator().manual_seed(seed),
                                progress=False)
        if total_calls(res.nfe) != expected["total"]:
            raise RuntimeError(f"search counted {res.nfe}, the formula says {expected}")
        ks = {"bon": equal_total_calls_k(expected["total"], T, g),
              "bon_equal_verifier": equal_verifier_calls_k(expected["verifier"])}
        results = {"search": res}
        for j, (name, k) in enumerate(ks.items()):
            results[name] = best_of_n(problem, reward, k, progress=False,
                                      generator=torch.Generator().manual_seed(10_000 * (j + 1) + seed))
            if results[name].nfe != {c: v for c, v in best_of_n_calls(k, T, g).items() if c != "total"}:
                raise RuntimeError(f"Best-of-{k} counted {results[name].nfe}")
        for name, r in results.items():
            hits[name] += is_aligned(r.best_image, text)
            best[name].append(r.best_image)
            calls[name] = {**r.nfe, "total": total_calls(r.nfe)}
        shown.append(text)
    n = len(runs)
    return {"search_alignment": hits["search"] / n, "bon_alignment": hits["bon"] / n,
            "bon_equal_verifier_alignment": hits["bon_equal_verifier"] / n,
            "denoiser_calls_search": calls["search"]["denoiser"], "denoiser_calls_bon": calls["bon"]["denoiser"],
            "verifier_calls_search": calls["search"]["verifier"], "verifier_calls_bon": calls["bon"]["verifier"],
            "total_calls_search": calls["search"]["total"], "total_calls_bon": calls["bon"]["total"],
            "bon_k": ks["bon"], "bon_equal_verifier_k": ks["bon_equal_verifier"],
            "bon_equal_verifier_calls": calls["bon_equal_verifier"], "runs": n, "calls_are": "per (prompt, seed) run",
            "config": {"num_steps": T, **settings, "seeds": budget["seeds"], "prompts": len(texts)},
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
            "images": best, "prompts": shown}
