"""The toy world's reward models (issue 13, deliverable 3): sizes x paradigms, same pairs and budget each.

Runs ``rdfast.toyworld.reward_models`` stage by stage, cached in ``--out`` (an interrupted run continues where it
stopped; a finished stage is read back), then writes the report: per size and paradigm the total parameters
as saved, the in-domain and OOD pairwise accuracy (both image orders, debias=False), the graded pairs'
accuracy (one attribute wrong beats two), and the pointwise verifier's ROC-AUC. ``--ship`` copies the best
pairwise RM and the best verifier to rdfast/toyworld/models/ (float32, or bfloat16 when float32 would pass
15 MB) and reports their metrics as loaded from there.

    python bench/toy_reward_models.py --out /tmp/toy-rm --json bench/results/toy_reward_models_cpu.json --ship
    python bench/toy_reward_models.py --smoke --json /tmp/smoke.json      # seconds; plumbing only
    python bench/toy_reward_models.py --preference /tmp/toy-pref --workers 2 --out /tmp/toy-rm-pref --json r.json
    python bench/toy_reward_models.py --preference /tmp/pref-big --samples-per-prompt 256 --generator-pairs 16000 \
        --sizes medium_112px --paradigms pointwise,pairwise_from_verifier,pairwise --budget long --out /tmp/rm-112 \
        --json bench/results/toy_reward_models_112px_cpu.json --ship       # the shipped models' recipe
    python bench/toy_reward_models.py --costs 20 --json bench/results/toy_rm_step_costs_cpu.json   # plan only

``--preference DIR`` trains on a ``rdfast.toyworld.preference`` dataset (generator + renderer pairs; built into DIR
first when DIR holds none, with the builder's defaults) and adds the held-out generator pairs' accuracy.
``--workers 2`` runs the stages in two one-thread processes side by side. ``--costs N`` trains nothing for the
report: it measures each size's warm-up and per-paradigm step on one thread (``time.process_time``, N steps after
one untimed) and the plan of the full budget from those costs (``reward_models.estimate``).

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

from rdfast.toyworld import preference as pref
from rdfast.toyworld import reward_models as trm

SHIP_LIMIT = 15 * 2**20  # bytes for the two reward models together (the generator gets the rest of 20 MB)


def folder_bytes(path, skip=("checkpoints",)) -> int:
    """Bytes of the files under ``path``, leaving out the folders named in ``skip`` (``trm.ship`` copies no
    training checkpoints, so they must not count towards what would be shipped)."""
    total = 0
    for d, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if x not in skip]
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def ship(results, out, dest, log):
    """Copy the best pairwise RM and the best verifier to ``dest``; their metrics as loaded from there."""
    pairwise = [r for r in results if r["paradigm"] == "pairwise"]
    verifiers = [r for r in results if r["paradigm"] == "pointwise"]
    if not pairwise or not verifiers:
        raise SystemExit("--ship needs the pairwise and pointwise paradigms")
    # generator pairs count where present: ReFL and search judge the generator's samples, not renders
    best = {"pairwise": max(pairwise, key=lambda r: (r["id_acc"] + r["ood_acc"] + r.get("generator_acc", 0), -r["params"])),
            "verifier": max(verifiers, key=lambda r: (r["in_domain_auc"] + r.get("ood_auc", 0) + r.get("generator_auc", 0),
                                                      -r["params"]))}
    sizes = {name: folder_bytes(os.path.join(out, r["size"], r.get("stage", r["paradigm"]))) for name, r in best.items()}
    dtype = None if sum(sizes.values()) <= SHIP_LIMIT else torch.bfloat16
    sets = trm.cached_datasets(out)
    shipped = {}
    for name, r in best.items():
        path = trm.ship(os.path.join(out, r["size"], r.get("stage", r["paradigm"])), os.path.join(dest, name), dtype)
        metrics = trm.measure(path, sets, r["paradigm"], log)
        shipped[name] = {**metrics, "size": r["size"], "stage": r.get("stage", r["paradigm"]), "dtype": str(dtype or torch.float32).replace("torch.", ""),
                         "bytes": folder_bytes(path)}
    return shipped


def measure_costs(sizes, steps: int, note=None) -> dict:
    """Seconds of one thread (process_time) per warm-up step and per training step of each paradigm, per size,
    each over ``steps`` steps after one untimed; and the full budget's plan on two workers from them."""
    import numpy as np

    from rdfast.model import RewardModel
    from rdfast.toyworld import warmup
    from rdfast.toyworld.data import INSTRUCTION, render_pairs
    from rdfast.train import TrainConfig, Trainer, sequence_logprobs

    costs, tmp = {}, tempfile.mkdtemp(prefix="rdfast-toy-costs-")
    train = render_pairs(16 * (steps + 1), "in_domain", 0)
    try:
        for size in sizes:
            base = trm.base_checkpoint(size, tmp)
            rm = RewardModel.from_pretrained(base, device="cpu", dtype=torch.float32)
            rm.model.requires_grad_(True)
            rm.model.train()
            opt, schedule = warmup.warmup_optimizer(rm.model, 1e-3, steps + 1)
            rng, row = np.random.default_rng(0), {}
            for step in range(steps + 1):
                if step == 1:
                    t = time.process_time()
                inputs, labels = warmup.lm_items(rm, warmup.examples(rng, 16))
                (-sequence_logprobs(rm, rm.hidden_states(inputs), labels).mean()).backward()
                opt.step()
                schedule.step()
                opt.zero_grad(set_to_none=True)
            row["warmup"] = (time.process_time() - t) / steps
            for paradigm in trm.PARADIGMS:
                spent = {}
                for n in (1, steps + 1):  # the difference leaves out loading and saving
                    config = TrainConfig(paradigm=paradigm, finetune="full", learning_rate=3e-4, batch_size=16,
                                         max_steps=n, warmup_steps=1, instruction=INSTRUCTION, progress=False,
                                         max_grad_norm=1.0, save_every=10**6)
                    t = time.process_time()
                    Trainer(base, config, train, output_dir=os.path.join(tmp, f"{size}-{paradigm}-{n}"), log=None).train()
                    spent[n] = time.process_time() - t
                row[paradigm] = (spent[steps + 1] - spent[1]) / steps
            costs[size] = {k: round(v, 4) for k, v in row.items()}
            print(size, costs[size], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step_seconds = {**trm.STEP_SECONDS, **costs}
    return {"step_seconds": costs, "steps": steps, "threads": 1, "clock": "time.process_time",
            "plan_full": trm.estimate(tuple(step_seconds), trm.PARADIGMS, trm.BUDGETS["full"], 2, step_seconds),
            "device": machine(), "load_average": load_average(), "run_note": note}


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
    parser.add_argument("--preference", help="train on this preference-data folder (built there first if empty)")
    parser.add_argument("--samples-per-prompt", type=int, default=64,
                        help="building --preference: generator samples per in-domain prompt (default %(default)s)")
    parser.add_argument("--generator-pairs", type=int, default=4000,
                        help="building --preference: generator training pairs (default %(default)s)")
    parser.add_argument("--renderer-pairs", type=int, default=4000,
                        help="building --preference: renderer training pairs (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="stages side by side, one thread each (default 1)")
    parser.add_argument("--costs", type=int, metavar="N", help="measure per-step costs over N steps and plan; no run")
    args = parser.parse_args(argv)
    if args.workers < 1 or (args.costs is not None and args.costs < 1):
        parser.error("--workers and --costs must be positive")
    torch.set_num_threads(1)  # one core per run: stages of several sizes may run side by side
    if args.costs:
        report = measure_costs(args.sizes.split(","), args.costs, args.note)
        write_json(args.json, report, indent=1)
        print(report["plan_full"], file=sys.stderr)
        return report
    if args.budget == "cached" and not args.out:
        parser.error("--budget cached needs --out (the folder of the run to continue)")
    budget = trm.read_budget(args.out) if args.budget == "cached" else trm.BUDGETS["smoke" if args.smoke else args.budget]
    out = args.out or tempfile.mkdtemp(prefix="rdfast-toy-rm-")
    t0 = time.perf_counter()
    try:
        data = None
        if args.preference:
            if not os.path.isfile(os.path.join(args.preference, "pairs.json")):
                sizes = pref.SMOKE if args.smoke else dict(samples_per_prompt=args.samples_per_prompt,
                                                          n_generator_pairs=args.generator_pairs,
                                                          n_renderer_pairs=args.renderer_pairs)
                pref.save(pref.build("toy:generator", seed=budget["seed"], log=sys.stderr, **sizes), args.preference)
            data = args.preference
        results = trm.run(out, args.sizes.split(","), args.paradigms.split(","), budget, log=sys.stderr,
                          preference=data, workers=args.workers)
        shipped = ship(results, out, trm.MODELS_DIR, sys.stderr) if args.ship else None
        warmups = {size: trm.warmup_summary(out, size) for size in args.sizes.split(",")}
        budget = trm.read_budget(out)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    report = {"rm": results, "shipped": shipped, "warmup": warmups, "budget": budget, "sizes": {k: trm.SIZES[k] for k in args.sizes.split(",")},
              "preference": trm.cached_spec(out).get("preference") if args.out else None,
              "plan": trm.estimate(args.sizes.split(","), args.paradigms.split(","), budget, max(2, args.workers)),
              "seconds": round(time.perf_counter() - t0, 1), "device": machine(), "load_average": load_average(),
              "note": "seconds counts only the stages this invocation ran (cached stages are read back); "
                      "each stage's own time is in rm[i].seconds", "run_note": args.note}
    write_json(args.json, report, indent=1)
    print(f"\n{'size':<8}{'stage':<24}{'params':>9}{'ID acc':>8}{'OOD acc':>8}{'graded':>8}{'gen acc':>8}{'ID AUC':>8}")
    for r in results:
        auc = f"{r['in_domain_auc']:.3f}" if "in_domain_auc" in r else "-"
        print(f"{r['size']:<8}{r.get('stage', r['paradigm']):<24}{r['params']:>9}{r['id_acc']:>8.3f}{r['ood_acc']:>8.3f}"
              f"{r.get('in_domain_graded_acc', float('nan')):>8.3f}{r.get('generator_acc', float('nan')):>8.3f}{auc:>8}")
    return report


if __name__ == "__main__":
    main()
