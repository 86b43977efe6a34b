"""Search over Paths against Best-of-N at equal NFE on the analytic toy (rdfast.diffusion.gaussian_toy).

Data: an 8-mode Gaussian ring in 2-D with the exact posterior-mean denoiser (flow matching, Euler, T steps on a
real FlowMatchEulerDiscreteScheduler). Verifier: a Gaussian bump halfway between two modes, where the data
density is low. For each seed, Search over Paths runs with its NFE counted by the sampler; Best-of-N then
gets K = NFE_search // T full samples (never more NFE than search). Paired comparison: each seed gives one
(search, Best-of-N) pair from independent noise; the table reports means, the mean paired difference with
its standard error, and the seeds where search wins.

    python bench/search.py --json bench/results/search_cpu.json      # seconds
    python bench/search.py --seeds 32 --n 4 --m 8 --start-step 8 --delta-f 1 --delta-b 3

The first configuration (the command-line one) fills the top-level JSON keys; ``configs`` holds all rows.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from common import machine, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: extra rows of the default table (n, m, start_step, delta_f, delta_b), at the same T
EXTRA = [(2, 8, 10, 2, 4), (4, 4, 10, 1, 2), (8, 4, 6, 2, 4)]


def compare(seeds: int, num_steps: int, n: int, m: int, start_step: int, delta_f: int, delta_b: int,
            seed0: int = 0) -> dict:
    """One configuration over ``seeds`` paired runs; returns the row (plain data)."""
    from rdfast.diffusion.gaussian_toy import toy_problem
    from rdfast.diffusion.search import best_of_n, equal_nfe_k, search_nfe, search_over_paths

    s_rewards, b_rewards, nfe_s, nfe_b, verifier_s, verifier_b = [], [], set(), set(), set(), set()
    for i in range(seeds):
        problem, verifier = toy_problem(num_steps)
        res = search_over_paths(problem, verifier, n=n, m=m, start_step=start_step, delta_f=delta_f,
                                delta_b=delta_b, generator=torch.Generator().manual_seed(seed0 + i), progress=False)
        assert res.nfe["denoiser"] == search_nfe(num_steps, n, m, start_step, delta_f, delta_b)
        k = equal_nfe_k(res.nfe["denoiser"], num_steps)
        problem_b, _ = toy_problem(num_steps)
        bon = best_of_n(problem_b, verifier, k, generator=torch.Generator().manual_seed(10_000 + seed0 + i),
                        progress=False)
        s_rewards.append(res.best_reward)
        b_rewards.append(bon.best_reward)
        nfe_s.add(res.nfe["denoiser"])
        nfe_b.add(bon.nfe["denoiser"])
        verifier_s.add(res.nfe["verifier"])
        verifier_b.add(bon.nfe["verifier"])
    diffs = [a - b for a, b in zip(s_rewards, b_rewards)]
    mean_diff = sum(diffs) / seeds
    sd = math.sqrt(sum((d - mean_diff) ** 2 for d in diffs) / max(1, seeds - 1))
    return {
        "search_mean_reward": sum(s_rewards) / seeds, "bon_mean_reward": sum(b_rewards) / seeds,
        "nfe_search": nfe_s.pop(), "nfe_bon": nfe_b.pop(), "verifier_calls_search": verifier_s.pop(),
        "verifier_calls_bon": verifier_b.pop(), "seeds": seeds, "mean_paired_diff": mean_diff,
        "paired_diff_stderr": sd / math.sqrt(seeds), "search_wins": sum(d > 0 for d in diffs),
        "config": {"num_steps": num_steps, "n": n, "m": m, "start_step": start_step, "delta_f": delta_f,
                   "delta_b": delta_b, "bon_k": equal_nfe_k(res.nfe["denoiser"], num_steps)},
        "search_rewards": s_rewards, "bon_rewards": b_rewards,
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
    print(f"{'N':>3} {'M':>3} {'start':>5} {'df':>3} {'db':>3} {'NFE':>5} {'K':>4} {'search':>8} {'BoN':>8} "
          f"{'diff +- se':>16} {'wins':>7}")
    for r in rows:
        c = r["config"]
        print(f"{c['n']:3d} {c['m']:3d} {c['start_step']:5d} {c['delta_f']:3d} {c['delta_b']:3d} {r['nfe_search']:5d} "
              f"{c['bon_k']:4d} {r['search_mean_reward']:8.4f} {r['bon_mean_reward']:8.4f} "
              f"{r['mean_paired_diff']:+8.4f} +- {r['paired_diff_stderr']:.4f} {r['search_wins']:3d}/{r['seeds']}")
    out = {k: v for k, v in rows[0].items()}
    out.update(device=machine(), device_type="cpu", torch=torch.__version__,
               toy="8-mode Gaussian ring (radius 3, std 0.25), exact denoiser, verifier optimum between modes",
               configs=rows)
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
