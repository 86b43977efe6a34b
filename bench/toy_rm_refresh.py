"""Refresh the toy pairwise reward model on the samples of generators it has aligned (``rdfast.toyworld.refresh``).

    python bench/toy_rm_refresh.py --out /tmp/refresh --json bench/results/toy_rm_refresh_cpu.json --ship
    python bench/toy_rm_refresh.py --smoke --out /tmp/refresh-smoke --json /tmp/smoke.json   # plumbing, a minute

Stages are cached in ``--out`` (an interrupted run continues). The report: the recipe, the round-1 ReFL runs, the
preference data's ``info``, and the RM's metrics before and after (``reward_models.measure``: renders in-domain,
OOD and graded; held-out base-generator pairs; held-out pairs of the round-1 generators, ``drift_acc`` and
``drift_graded_acc``), plus ``environment()``. ``--ship`` replaces ``rdfast/toyworld/models/pairwise`` with the
fine-tuned RM (float32) only when it is better by the rule ``bench/toy_reward_models.py --ship`` picks with (ID +
OOD render accuracy + generator-pair accuracy), and reports its metrics as loaded from there. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from common import environment, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rdfast.errors import InputError  # noqa: E402
from rdfast.toyworld import refresh  # noqa: E402
from rdfast.toyworld import reward_models as trm  # noqa: E402


def score(metrics: dict) -> float:
    """The shipping rule of ``bench/toy_reward_models.py``: ID + OOD render accuracy + generator-pair accuracy."""
    return metrics["id_acc"] + metrics["ood_acc"] + metrics.get("generator_acc", 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the stage cache (resumable)")
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("--generator", default="toy:generator", help="toy:generator or a pipeline folder")
    parser.add_argument("--pairwise", default="toy:pairwise", help="toy:pairwise or a trained pairwise RM's folder")
    parser.add_argument("--smoke", action="store_true", help="plumbing only: refresh.SMOKE")
    parser.add_argument("--ship", action="store_true", help="replace the shipped toy:pairwise when better")
    parser.add_argument("--lr", type=float, help="the fine-tuning learning rate (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--note", help="recorded in the report (e.g. the load)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be positive")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.ship and args.smoke:
        parser.error("--ship with --smoke would ship a plumbing run")
    torch.set_num_threads(args.threads)
    recipe = dict(refresh.SMOKE if args.smoke else refresh.RECIPE)
    if args.lr is not None:
        recipe["lr"] = args.lr
    try:
        refresh.check(args.out, recipe, args.generator, args.pairwise)
    except InputError as error:  # a bad model name or another recipe's cache: one line, before any work
        parser.error(str(error))
    report = refresh.run(args.out, args.generator, args.pairwise, recipe)
    report["shipped"] = None
    if args.ship:
        if score(report["after"]) > score(report["before"]):
            path = trm.ship(report["rm"], os.path.join(trm.MODELS_DIR, "pairwise"))
            sets = refresh.evaluation_sets(*refresh.cached_data(args.out, report["recipe"]),
                                     report["recipe"].get("render_test_pairs", 200))
            report["shipped"] = {**trm.measure(path, sets, "pairwise", None), "dtype": "float32"}
        else:
            print(f"not shipped: {score(report['after']):.3f} <= {score(report['before']):.3f} (ID + OOD + generator "
                  "accuracy, after vs before)", file=sys.stderr)
    write_json(args.json, {**environment(), **report, "run_note": args.note}, indent=1)
    return report


if __name__ == "__main__":
    main()
