"""ReFL and Search over Paths with given toy reward models (default: the shipped ``toy:`` models), issue 13.

``bench/rewarddance_toy.py`` trains its own reward models inside its budget; this runs the alignment half of the
study against reward models trained elsewhere (by default the shipped ``toy:pairwise`` and ``toy:verifier``), with
the study's budgets (``refl_study.REFL_BUDGETS``, ``search_study.SEARCH_BUDGETS``), so the claim "ReFL with the
best pairwise RM raises alignment" is checked on exactly the models users get. Runs, each from the same generator:

    control   the reward switched off (``refl_study.NoReward``): the pretraining (flow-matching) loss alone
    top2      ReFL with the pairwise RM against Best-of-8 top-2 references (the paper's recipe)
    bottom2   the same with the bottom-2 references (the paper's reference ablation)
    search    Search over Paths with the verifier vs Best-of-N at equal total calls

    python bench/toy_alignment.py --json bench/results/toy_alignment_cpu.json --seeds 0,1,2
    python bench/toy_alignment.py --smoke --json /tmp/smoke.json        # seconds; plumbing only
    python bench/toy_alignment.py --merge a.json b.json --json out.json   # invocations run side by side, one report

Oracle alignment is measured on all in-domain prompts x the budget's fixed seeds, the same before and after.
``--seeds`` repeats each ReFL run with other training seeds (prompt order, renders, noise, references): single
runs differ by more than their sampling error, so gains are read from the mean over seeds. Writes the JSON
(``environment()`` fields, ``base_alignment``, ``refl`` rows, ``refl_summary`` per run over seeds, ``search``)
and one PNG grid of samples with the oracle's verdicts per run (its first seed) next to it. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from common import environment, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rdfast.diffusion.ema import check_decay  # noqa: E402
from rdfast.diffusion.pipelines import load_pipeline  # noqa: E402
from rdfast.toyworld import refl_study, search_study  # noqa: E402
from rdfast.toyworld.figures import verdict_grid  # noqa: E402

RUNS = ("control", "top2", "bottom2", "search")
SHOWN = 4  #: seeds per prompt in the sample grids (of the budget's eval seeds)


def refl_run(name: str, args, budget: dict, base: float) -> dict:
    """One ReFL run (or the control) for ``budget`` (its ``seed`` included)."""
    if name == "control":
        reward = refl_study.NoReward()
    else:
        reward = refl_study.pairwise_reward(args.pairwise, budget, "top" if name == "top2" else "bottom")
    row = refl_study.run_refl(args.generator, reward, budget, base_alignment=base, progress=not args.quiet)
    return {"run": name, "seed": budget["seed"], "reward_model": None if name == "control" else args.pairwise, **row}


def summarise(rows: list[dict], base: float) -> dict:
    """Per run: aligned alignment per seed, its mean and standard deviation, the mean gain over the base and over
    the control's mean (when the control ran)."""
    out = {}
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        got = [r["aligned_alignment"] for r in mine]
        mean = float(np.mean(got))
        out[name] = {"seeds": [r["seed"] for r in mine], "aligned": got, "mean": mean,
                     "sd": float(np.std(got, ddof=1)) if len(got) > 1 else None, "gain": mean - base}
    if "control" in out:
        for row in out.values():
            row["gain_over_control"] = row["mean"] - out["control"]["mean"]
    return out


#: what merged reports must share (commits may differ: each invocation's is kept under ``invocations``; the search
#: budget is the searching report's own)
MATCHED = ("generator", "base_alignment", "machine")


def merge(paths: list[str]) -> dict:
    """One report from invocations that split the runs and seeds between them (e.g. one per core): their ReFL rows
    (no run and seed twice), the one search, each run's figure from the first report holding it, ``refl_summary`` recomputed.
    ``seconds`` is the longest invocation's (they ran side by side); ``invocations`` keeps each one's.
    Raises ValueError naming the report when the reports are not one experiment's."""
    reports = []
    for path in paths:
        try:
            with open(path) as fh:
                report = json.load(fh)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot be read as JSON ({e})") from None
        if not (isinstance(report, dict) and all(k in report for k in ("refl", "search", "budgets", *MATCHED))):
            raise ValueError(f"{path}: not a toy_alignment report (no refl, search, budgets, {', '.join(MATCHED)})")
        reports.append(report)
    first = reports[0]
    for path, r in zip(paths[1:], reports[1:]):
        differs = [k for k in MATCHED if r.get(k) != first.get(k)]
        differs += ["budgets.refl"] if r["budgets"]["refl"] != first["budgets"]["refl"] else []
        if differs:
            raise ValueError(f"{path} differs from {paths[0]} in {differs}: not one experiment")
    rows = [row for r in reports for row in r["refl"]]
    keys = [(row["run"], row["seed"]) for row in rows]
    if len(set(keys)) < len(keys):
        raise ValueError(f"a run and seed appears twice among {keys}")
    searching = [r for r in reports if r["search"] is not None]
    if len(searching) > 1:
        raise ValueError("more than one report holds a search")
    rows.sort(key=lambda row: (RUNS.index(row["run"]), row["seed"]))
    figures = {}
    for r in reports:
        figures.update({k: v for k, v in r["figures"].items() if k not in figures})
    return {**first, "refl": rows, "refl_summary": summarise(rows, first["base_alignment"]),
            "search": searching[0]["search"] if searching else None,
            "budgets": {"refl": first["budgets"]["refl"], "search": (searching or [first])[0]["budgets"]["search"]},
            "figures": figures, "seconds": max(r["seconds"] for r in reports),
            "invocations": [{"json": p, "seconds": r["seconds"], "load_average": r["load_average"],
                             "git_commit": r["git_commit"], "run_note": r["run_note"]} for p, r in zip(paths, reports)]}


def grid(row: dict, seeds: int, path: str) -> str:
    keep = [k for k in range(len(row["prompts"])) if k % seeds < SHOWN]
    return verdict_grid([row["images"][k] for k in keep], [row["prompts"][k] for k in keep], path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the report (PNG grids go next to it)")
    parser.add_argument("--generator", default="toy:generator", help="toy:generator or a pipeline folder")
    parser.add_argument("--pairwise", default="toy:pairwise", help="the pairwise reward model for ReFL")
    parser.add_argument("--verifier", default="toy:verifier", help="the pointwise verifier for search")
    parser.add_argument("--runs", default=",".join(RUNS), help="among " + ",".join(RUNS))
    parser.add_argument("--seeds", default="0", help="ReFL training seeds, comma-separated (default %(default)s)")
    parser.add_argument("--steps", type=int, help="ReFL updates (default: the budget's)")
    parser.add_argument("--lr", type=float, help="ReFL learning rate (default: the budget's)")
    parser.add_argument("--ema-decay", type=float, help="evaluate the EMA of the ReFL weights with this decay "
                        "(default: the last iterate)")
    parser.add_argument("--search-seeds", type=int, help="noise seeds per prompt for the search (default: the budget's)")
    parser.add_argument("--smoke", action="store_true", help="the smoke budgets: plumbing only, seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--note", help="recorded in the report (e.g. the load)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these reports into --json")
    args = parser.parse_args(argv)
    if args.merge:
        try:
            report = merge(args.merge)
        except ValueError as e:
            parser.error(f"--merge: {e}")
        if args.note:
            report["run_note"] = args.note
        write_json(args.json, report, indent=1)
        return report
    runs = args.runs.split(",")
    unknown = [r for r in runs if r not in RUNS]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    problems = [f"--runs: unknown {unknown} (choose among {RUNS})"] if unknown else []
    problems += [f"--{name.replace('_', '-')} must be positive, got {v}" for name, v in
                 (("threads", args.threads), ("steps", args.steps), ("lr", args.lr), ("search_seeds", args.search_seeds))
                 if v is not None and v <= 0]
    if args.ema_decay is not None:
        try:
            check_decay(args.ema_decay, "--ema-decay")
        except ValueError as e:
            problems.append(str(e))
    if problems:
        parser.error("; ".join(problems))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)  # the figures go next to the JSON
    torch.set_num_threads(args.threads)
    budget = dict(refl_study.REFL_BUDGETS["smoke" if args.smoke else "full"])
    budget.update({k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("ema_decay", args.ema_decay))
                   if v is not None})
    search_budget = dict(search_study.SEARCH_BUDGETS["smoke" if args.smoke else "full"])
    search_budget.update({"seeds": args.search_seeds} if args.search_seeds is not None else {})
    stem = os.path.splitext(args.json)[0]
    t0 = time.perf_counter()
    texts = refl_study.study_prompts(budget)
    base, images, pool = refl_study.oracle_alignment(load_pipeline(args.generator, device="cpu"), texts,
                                                     budget["eval_seeds"])
    figures = {"base": grid({"images": images, "prompts": pool}, budget["eval_seeds"], f"{stem}_base.png")}
    report = {**environment(), "generator": args.generator, "base_alignment": base, "refl": [], "search": None,
              "budgets": {"refl": budget, "search": search_budget}, "figures": figures, "run_note": args.note}
    for name in runs:
        if name == "search":
            row = search_study.run_search(args.generator, args.verifier, search_budget, progress=not args.quiet)
            report["search"] = {"verifier": args.verifier, **{k: v for k, v in row.items() if k not in ("images", "prompts")}}
            continue
        for seed in seeds:
            row = refl_run(name, args, {**budget, "seed": seed}, base)
            if seed == seeds[0]:
                figures[name] = grid(row, budget["eval_seeds"], f"{stem}_{name}.png")
            report["refl"].append({k: v for k, v in row.items() if k not in ("images", "prompts")})
            print(f"{name} seed {seed}: alignment {base:.3f} -> {row['aligned_alignment']:.3f}, reward "
                  f"{row['reward_first']:.3f} -> {row['reward_last']:.3f} ({row['seconds']} s)"
                  + (f"; last iterate {row['last_iterate_alignment']:.3f}" if row["ema_decay"] is not None else ""), file=sys.stderr, flush=True)
    report["refl_summary"] = summarise(report["refl"], base)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.json, report, indent=1)
    return report


if __name__ == "__main__":
    main()
