"""The toy world's reward models (issue 13, deliverable 3): sizes x paradigms, same pairs and budget each.

Runs ``rdfast.toyworld.reward_models`` stage by stage, cached in ``--out`` (an interrupted run continues where it
stopped; a finished stage is read back), then writes the report: per size and paradigm the total parameters
as saved, the in-domain and OOD pairwise accuracy (both image orders, debias=False), the graded pairs'
accuracy (one attribute wrong beats two), and the pointwise verifier's ROC-AUC. ``--ship`` copies the best
pairwise RM and the best verifier to rdfast/toyworld/models/ (float32, or bfloat16 when float32 would pass
15 MB) and reports their metrics as loaded from there.

    python bench/toy_reward_models.py --out /tmp/toy-rm --json bench/results/toy_reward_models_cpu.json --ship
    python bench/toy_reward_models.py --smoke --json /tmp/smoke.json      # seconds; plumbing only

Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

from common import load_average, machine, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rdfast.toyworld import reward_models as trm

SHIP_LIMIT = 15 * 2**20  # bytes for the two reward models together (the generator gets the rest of 20 MB)


def folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def ship(results, out, dest, log):
    """Copy the best pairwise RM and the best verifier to ``dest``; their metrics as loaded from there."""
    pairwise = [r for r in results if r["paradigm"] == "pairwise"]
    verifiers = [r for r in results if r["paradigm"] == "pointwise"]
    if not pairwise or not verifiers:
        raise SystemExit("--ship needs the pairwise and pointwise paradigms")
    best = {"pairwise": max(pairwise, key=lambda r: (r["id_acc"] + r["ood_acc"], -r["params"])),
            "verifier": max(verifiers, key=lambda r: (r["in_domain_auc"] + r.get("ood_auc", 0), -r["params"]))}
    sizes = {name: folder_bytes(os.path.join(out, r["size"], r.get("stage", r["paradigm"]))) for name, r in best.items()}
    dtype = None if sum(sizes.values()) <= SHIP_LIMIT else torch.bfloat16
    sets = trm.datasets(trm.read_budget(out))
    shipped = {}
    for name, r in best.items():
        path = trm.ship(os.path.join(out, r["size"], r.get("stage", r["paradigm"])), os.path.join(dest, name), dtype)
        metrics = trm.measure(path, sets, r["paradigm"], log)
        shipped[name] = {**metrics, "size": r["size"], "stage": r.get("stage", r["paradigm"]), "dtype": str(dtype or torch.float32).replace("torch.", ""),
                         "bytes": folder_bytes(path)}
    return shipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("--out", help="stage cache (default: a temporary folder, removed after)")
    parser.add_argument("--budget", default="full", choices=sorted(trm.BUDGETS) + ["cached"],
                        help="steps and data (default %(default)s; cached: the budget the --out folder was run with)")
    parser.add_argument("--smoke", action="store_true", help="--budget smoke: checks the plumbing in seconds")
    parser.add_argument("--sizes", default="small,medium,large", help="among " + ",".join(trm.SIZES))
    parser.add_argument("--paradigms", default=",".join(trm.PARADIGMS),
                        help="stages among " + ",".join(trm.STAGES) + " (a stage trains the one it starts from first)")
    parser.add_argument("--note", help="recorded in the report (e.g. the load while cached stages trained)")
    parser.add_argument("--ship", action="store_true", help="copy the best pairwise RM and verifier into the package")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core per run: stages of several sizes may run side by side
    if args.budget == "cached" and not args.out:
        parser.error("--budget cached needs --out (the folder of the run to continue)")
    budget = trm.read_budget(args.out) if args.budget == "cached" else trm.BUDGETS["smoke" if args.smoke else args.budget]
    out = args.out or tempfile.mkdtemp(prefix="rdfast-toy-rm-")
    t0 = time.perf_counter()
    try:
        results = trm.run(out, args.sizes.split(","), args.paradigms.split(","), budget, log=sys.stderr)
        shipped = ship(results, out, trm.MODELS_DIR, sys.stderr) if args.ship else None
        warmups = {size: trm.warmup_summary(out, size) for size in args.sizes.split(",")}
        budget = trm.read_budget(out)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    report = {"rm": results, "shipped": shipped, "warmup": warmups, "budget": budget, "sizes": {k: trm.SIZES[k] for k in args.sizes.split(",")},
              "seconds": round(time.perf_counter() - t0, 1), "device": machine(), "load_average": load_average(),
              "note": "seconds counts only the stages this invocation ran (cached stages are read back); "
                      "each stage's own time is in rm[i].seconds", "run_note": args.note}
    write_json(args.json, report, indent=1)
    print(f"\n{'size':<8}{'stage':<24}{'params':>9}{'ID acc':>8}{'OOD acc':>8}{'graded':>8}{'ID AUC':>8}")
    for r in results:
        auc = f"{r['in_domain_auc']:.3f}" if "in_domain_auc" in r else "-"
        print(f"{r['size']:<8}{r.get('stage', r['paradigm']):<24}{r['params']:>9}{r['id_acc']:>8.3f}{r['ood_acc']:>8.3f}"
              f"{r.get('in_domain_graded_acc', float('nan')):>8.3f}{auc:>8}")
    return report


if __name__ == "__main__":
    main()
