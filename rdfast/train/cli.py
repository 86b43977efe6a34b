"""``rdfast train`` and ``rdfast eval``.

    rdfast train --model BASE --train train.jsonl --val val.jsonl --output out/rm --paradigm pairwise
    rdfast train ... --num-frames 8                            # video pairs ("video1", "video2" in the JSONL)
    rdfast train --model tiny:qwen2_vl ... --lr-schedule cosine --warmup-steps 10 --no-both-orders
    torchrun --nproc_per_node 4 -m rdfast.cli train ...        # DDP (gloo on CPU, NCCL on CUDA)
    rdfast eval  --model out/rm --test test.jsonl --val val.jsonl --output results.json

Every TrainConfig field is a flag (``--learning-rate``/``--lr``, ``--max-steps``/``--steps``, ``--bf16``/
``--no-bf16``, comma lists for tuples, ``none`` for optional fields): see ``add_config_flags``.
Bad data lines are reported with their line numbers and skipped (``--strict`` stops instead).
``register(subparsers)`` adds both commands to the ``rdfast`` parser; ``main`` runs them alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing

from ..resolve import resolve
from ..reward_config import RewardConfig
from ..testing import tiny_checkpoint
from .batches import PARADIGMS
from .config import TrainConfig
from .data import DataError, load_preferences
from .distributed import init_distributed
from .evaluate import evaluate, load_trained
from .trainer import Trainer

MODEL_HELP = "a checkpoint directory, tiny:FAMILY or a hub id (org/name[@revision])"


def _none_or(parse):
    """An argparse type for an optional field: "none" gives None, anything else ``parse(text)``."""
    def convert(text):
        return None if text.lower() == "none" else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _comma_list(parse, length=None):
    """An argparse type for a tuple field: a comma list, each element ``parse``d."""
    def convert(text):
        values = tuple(parse(v.strip()) for v in text.split(",") if v.strip())
        if length is not None and len(values) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated values, got {text!r}")
        return values

    convert.__name__ = "comma list"
    return convert


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, from the field's type, default and metadata (help, choices, aliases).

    ``learning_rate`` gives ``--learning-rate`` (and its alias ``--lr``); booleans give ``--flag`` and
    ``--no-flag``; tuples take comma lists; optional fields accept ``none``. Every flag's dest is the field
    name, so ``config_from_args`` builds the TrainConfig by name.

    Args:
        parser: the ``train`` subcommand's parser.
    """
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training configuration (TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        meta, hint = f.metadata, hints[f.name]
        flags = [f"--{f.name.replace('_', '-')}", *meta.get("flags", ())]
        help_text = f"{meta['help']} (default: {_show(f.default)})"
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=meta["help"])
            if meta.get("off_flag"):
                group.add_argument(meta["off_flag"], dest=f.name, action="store_false",
                                   help=f"same as --no-{f.name.replace('_', '-')}")
            continue
        if typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            parse = _comma_list(args[0], None if args[-1] is Ellipsis else len(args))
        else:
            parse = hint
        group.add_argument(*flags, dest=f.name, type=_none_or(parse) if optional else parse, default=f.default,
                           choices=meta.get("choices"), help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the ``add_config_flags`` flags in ``args`` describe."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def _add_train(sub):
    p = sub.add_parser("train", help="train a reward model on preference JSONL (LoRA or full, torchrun-ready)")
    p.add_argument("--model", required=True, help=f"base model: {MODEL_HELP}")
    p.add_argument("--train", required=True, help="preference JSONL")
    p.add_argument("--val", help="held-out preference JSONL (evaluated every --eval-every steps and at the end)")
    p.add_argument("--output", required=True, help="output directory (the trained model, checkpoints, plot)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the latest checkpoint in --output (or from the given checkpoint folder)")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)


def _add_eval(sub):
    p = sub.add_parser("eval", help="pairwise accuracy (with and without ties, by instruction) on preference JSONL")
    p.add_argument("--model", required=True, help=f"a directory written by rdfast train, or {MODEL_HELP}")
    p.add_argument("--test", required=True, help="preference JSONL to report on")
    p.add_argument("--val", help="validation JSONL: the tie threshold is tuned on it")
    p.add_argument("--tie-threshold", type=float, default=None, help="fixed tie threshold when no --val")
    p.add_argument("--paradigm", default=None, choices=PARADIGMS,
                   help="default: as recorded in the model's rdfast_config.json")
    p.add_argument("--debias", action="store_true", help="pairwise: average both image orders")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--output", help="write the full results (probabilities included) as JSON here")
    p.add_argument("--strict", action="store_true", help="stop at bad data instead of skipping it")
    p.set_defaults(func=cmd_eval)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands to an argparse subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
    """
    _add_train(subparsers)
    _add_eval(subparsers)


def cmd_train(args: argparse.Namespace) -> dict:
    """``rdfast train``: load the data (every rank validates, rank 0 reports), train, print a JSON summary.

    Returns:
        The Trainer's final metrics.
    """
    try:
        config = config_from_args(args)
    except ValueError as err:
        raise SystemExit(f"rdfast train: {err}") from err
    rank = init_distributed()[0]
    log = sys.stderr if rank == 0 else None  # every rank validates; one reports
    try:
        train = load_preferences(args.train, strict=config.strict, log=log)
        val = load_preferences(args.val, strict=config.strict, log=log) if args.val else None
    except DataError as err:  # strict: every bad line was reported; stop before any training
        raise SystemExit(f"rdfast train: stopped (--strict): {err}") from err
    model = resolve(args.model, tiny_checkpoint, "reward model")
    result = Trainer(model, config, train, val, output_dir=args.output, log=sys.stderr).train(resume=args.resume)
    if rank == 0:
        summary = {k: v for k, v in result.items() if k != "eval"}
        if result.get("eval"):
            summary["eval_accuracy"] = result["eval"]["accuracy"]
        print(json.dumps(summary))
    return result


def cmd_eval(args: argparse.Namespace) -> dict:
    """``rdfast eval``: accuracy of a trained model on --test (tie threshold tuned on --val); prints a table.

    Returns:
        ``evaluate``'s result.
    """
    try:
        test = load_preferences(args.test, strict=args.strict)
        val = load_preferences(args.val, strict=args.strict) if args.val else None
    except DataError as err:
        raise SystemExit(f"rdfast eval: stopped (--strict): {err}") from err
    path = resolve(args.model, tiny_checkpoint, "reward model")
    model, paradigm = load_trained(path, device=args.device)
    trained = RewardConfig.load(path)
    result = evaluate(model, test, val, paradigm=args.paradigm or paradigm, debias=args.debias,
                      tie_threshold=args.tie_threshold, batch_size=args.batch_size,
                      cot_format=trained.cot_format if trained else None)
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(result, fh, indent=1)
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    """A short table: overall and per instruction, accuracy without and with ties.

    Args:
        result: what ``evaluate`` returned.
    Returns:
        The table as text.
    """
    def pct(x):
        return "  n/a " if math.isnan(x) else f"{100 * x:6.2f}"

    lines = [(f"paradigm {result['paradigm']}; tie threshold {result['tie_threshold']:.4g} "
              f"(from {result['tie_threshold_from']})"),
             f"{'instruction':<24}{'pairs':>7}{'ties':>6}{'acc':>8}{'acc+ties':>10}"]
    rows = [("all", result)] + list(result["by_instruction"].items())
    for name, m in rows:
        lines.append(f"{name[:23]:<24}{m['n_pairs']:>7}{m['n_ties']:>6}{pct(m['accuracy']):>8}"
                     f"{pct(m['accuracy_with_ties']):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    """Run ``train`` or ``eval`` on their own (``python -m rdfast.train.cli train ...``).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    Returns:
        What the command returned (metrics).
    """
    parser = argparse.ArgumentParser(prog="rdfast", description="train and evaluate reward models")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
