"""Search over Paths against Best-of-N at equal compute on the analytic toy (rdfast.diffusion.gaussian_toy).

Data: an 8-mode Gaussian ring in 2-D with the exact posterior-mean denoiser (flow matching, Euler, T steps on a
real FlowMatchEulerDiscreteScheduler). Verifier: a Gaussian bump halfway between two modes, where the data
density is low. Compute is counted by rdfast.diffusion.search, per sample: denoiser evaluations and verifier
evaluations, total = their sum. For each seed, Search over Paths runs with its calls counted; Best-of-N then runs
three times from independent noise, with K chosen for
  equal total calls     (headline: K (T + 1) <= search's denoiser + verifier calls; ``equal_total_calls_k``),
  equal verifier calls  (K = search's verifier calls: Best-of-N gets more denoiser calls),
  equal denoiser calls  (K T <= search's denoiser calls: Best-of-N gets fewer verifier calls).
Paired comparison per baseline: the mean best reward, the mean paired difference with its standard error, and
the seeds where search wins.

    python bench/search.py --json bench/results/search_cpu.json      # seconds
    python bench/search.py --seeds 32 --n 4 --m 8 --start-step 8 --delta-f 1 --delta-b 3

The first configuration (the command-line one) fills the top-level JSON keys (its ``bon_*`` / ``nfe_bon`` keys are
the equal-total-calls baseline); ``configs`` holds all rows; bench/common.py's ``environment()`` fields sit beside.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from common import environment, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: extra rows of the default table (n, m, start_step, delta_f, delta_b), at the same T
EXTRA = [(2, 8, 10, 2, 4), (4, 4, 10, 1, 2), (8, 4, 6, 2, 4)]
#: Best-of-N baselines, the headline first
BASELINES = ("equal_total_calls", "equal_verifier_calls", "equal_denoiser_calls")


def paired(search_rewards: list[float], bon_rewards: list[float]) -> dict:
    """Mean rewards, mean paired difference (search - Best-of-N) with its standard error, and search's wins."""
    seeds = len(search_rewards)
    diffs = [a - b for a, b in zip(search_rewards, bon_rewards)]
    mean_diff = sum(diffs) / seeds
    sd = math.sqrt(sum((d - mean_diff) ** 2 for d in diffs) / max(1, seeds - 1))
    return {"bon_mean_reward": sum(bon_rewards) / seeds, "mean_paired_diff": mean_diff,
            "paired_diff_stderr": sd / math.sqrt(seeds), "search_wins": sum(d > 0 for d in diffs)}


def compare(seeds: int, num_steps: int, n: int, m: int, start_step: int, delta_f: int, delta_b: int,
            seed0: int = 0) -> dict:
    """One configuration over ``seeds`` paired runs; returns the row (plain data)."""
    from rdfast.diffusion.gaussian_toy import toy_problem
    from rdfast.diffusion.search import (
        best_of_n,
        equal_nfe_k,
        equal_total_calls_k,
        equal_verifier_calls_k,
        search_calls,
        search_over_paths,
        total_calls,
    )

    expected = search_calls(num_steps, n, m, start_step, delta_f, delta_b)
    ks = {"equal_total_calls": equal_total_calls_k(expected["total"], num_steps),
          "equal_verifier_calls": equal_verifier_calls_k(expected["verifier"]),
          "equal_denoiser_calls": equal_nfe_k(expected["denoiser"], num_steps)}
    s_rewards, b_rewards, b_calls = [], {b: [] for b in BASELINES}, {}
    for i in range(seeds):
        problem, verifier = toy_problem(num_steps)
        res = search_over_paths(problem, verifier, n=n, m=m, start_step=start_step, delta_f=delta_f,
                                delta_b=delta_b, generator=torch.Generator().manual_seed(seed0 + i), progress=False)
        assert {**res.nfe, "total": total_calls(res.nfe)} == expected, (res.nfe, expected)
        s_rewards.append(res.best_reward)
        for j, name in enumerate(BASELINES):
            problem_b, _ = toy_problem(num_steps)
            bon = best_of_n(problem_b, verifier, ks[name], progress=False,
                            generator=torch.Generator().manual_seed(10_000 * (j + 1) + seed0 + i))
            b_rewards[name].append(bon.best_reward)
            b_calls[name] = {**bon.nfe, "total": total_calls(bon.nfe)}
    baselines = {name: {"k": ks[name], "denoiser_calls": b_calls[name]["denoiser"],
                        "verifier_calls": b_calls[name]["verifier"], "total_calls": b_calls[name]["total"],
                        **paired(s_rewards, b_rewards[name]), "rewards": b_rewards[name]} for name in BASELINES}
    head = baselines[BASELINES[0]]
    return {
        "search_mean_reward": sum(s_rewards) / seeds, "bon_mean_reward": head["bon_mean_reward"],
        "nfe_search": expected["denoiser"], "nfe_bon": head["denoiser_calls"],
        "verifier_calls_search": expected["verifier"], "verifier_calls_bon": head["verifier_calls"],
        "total_calls_search": expected["total"], "total_calls_bon": head["total_calls"], "seeds": seeds,
        "mean_paired_diff": head["mean_paired_diff"], "paired_diff_stderr": head["paired_diff_stderr"],
        "search_wins": head["search_wins"], "equal": BASELINES[0],
        "config": {"num_steps": num_steps, "n": n, "m": m, "start_step": start_step, "delta_f": delta_f,
                   "delta_b": delta_b, "bon_k": head["k"]},
        "baselines": baselines, "search_rewards": s_rewards, "bon_rewards": head["rewards"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--start-step", type=int, default=10)
    p.add_argument("--delta-f", type=int, default=2)
    p.add_argument("--delta-b", type=int, default=4)
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--no-extra", action="store_true", help="only the command-line configuration")
    args = p.parse_args(argv)
    if args.seeds < 8:
        p.error("--seeds must be at least 8")
    main_cfg = (args.n, args.m, args.start_step, args.delta_f, args.delta_b)
    cfgs = [main_cfg] + ([] if args.no_extra else [c for c in EXTRA if c != main_cfg])
    rows = [compare(args.seeds, args.num_steps, *c, seed0=args.seed0) for c in cfgs]
    print(f"{'N':>3} {'M':>3} {'start':>5} {'df':>3} {'db':>3} {'den':>5} {'ver':>4} {'total':>5} {'search':>8}  "
          + "  ".join(f"{b + ' (K, den, ver): BoN, diff +- se, wins':<52}" for b in BASELINES))
    for r in rows:
        c = r["config"]
        cells = [f"K={b['k']:<4d} {b['denoiser_calls']:5d} {b['verifier_calls']:4d}: {b['bon_mean_reward']:.4f} "
                 f"{b['mean_paired_diff']:+.4f} +- {b['paired_diff_stderr']:.4f} {b['search_wins']:2d}/{r['seeds']}"
                 for b in r["baselines"].values()]
        print(f"{c['n']:3d} {c['m']:3d} {c['start_step']:5d} {c['delta_f']:3d} {c['delta_b']:3d} {r['nfe_search']:5d} "
              f"{r['verifier_calls_search']:4d} {r['total_calls_search']:5d} {r['search_mean_reward']:8.4f}  "
              + "  ".join(f"{cell:<52}" for cell in cells))
    out = {**environment(), **rows[0],
           "toy": "8-mode Gaussian ring (radius 3, std 0.25), exact denoiser, verifier optimum between modes",
           "configs": rows}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
