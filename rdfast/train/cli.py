"""``rdfast train`` and ``rdfast eval``.

    rdfast train --model BASE --train train.jsonl --val val.jsonl --output out/rm --paradigm pairwise
    rdfast train ... --output out/rm --resume                  # continue that run (--overwrite: start over)
    rdfast train ... --num-frames 8                            # video pairs ("video1", "video2" in the JSONL)
    rdfast train --model tiny:qwen2_vl ... --lr-schedule cosine --warmup-steps 10 --no-both-orders
    torchrun --nproc_per_node 4 -m rdfast.cli train ...        # DDP (gloo on CPU, NCCL on CUDA)
    rdfast eval  --model out/rm --test test.jsonl --val val.jsonl --output results.json

Every TrainConfig field is a flag (``--learning-rate``/``--lr``, ``--max-steps``/``--steps``, ``--bf16``/
``--no-bf16``, comma lists for tuples, ``none`` for optional fields): see ``add_config_flags``.
Bad data lines are reported with their line numbers and skipped (``--strict`` stops instead).
``--output`` belongs to one run: into a folder holding another run, ``--resume`` continues that run (its saved
settings; a flag that differs is an error naming it) and ``--overwrite`` starts over; otherwise it is refused.
User errors (missing or folder inputs, an unwritable output, a missing CUDA device, too few records) are one
line on stderr and exit code 2, before any model is loaded.
``register(subparsers)`` adds both commands to the ``rdfast`` parser; ``main`` runs them alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import types
import typing

from ..errors import InputError, check_device, run_command
from ..jsonl_io import check_input_file, check_output_file
from ..resolve import resolve
from ..reward_config import RewardConfig
from ..testing import tiny_checkpoint
from .batches import PARADIGMS
from .checkpoints import list_checkpoints, read_state
from .config import TrainConfig
from .data import DataError, load_preferences, usable_records
from .distributed import init_distributed
from .evaluate import evaluate, load_trained
from .rundir import CHECKPOINTS, check_output_dir, resume_conflicts, saved_config
from .trainer import Trainer

MODEL_HELP = "a checkpoint directory, tiny:FAMILY, toy:NAME or a hub id (org/name[@revision])"


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


class _Given(argparse.Action):
    """Stores its value and records the field as given on the command line (``--resume`` checks those against
    the saved config; the others take the saved values)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class _GivenFalse(argparse.Action):
    """A boolean's extra off flag (``--one-order``): stores False and records the field as given."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, False)
        _mark_given(namespace, self.dest)


class _GivenBool(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, recording the field as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark_given(namespace, self.dest)


def _mark_given(namespace, dest):
    namespace.given_config = {*getattr(namespace, "given_config", ()), dest}


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
            group.add_argument(*flags, dest=f.name, action=_GivenBool, default=f.default, help=meta["help"])
            if meta.get("off_flag"):
                group.add_argument(meta["off_flag"], dest=f.name, action=_GivenFalse,
                                   help=f"same as --no-{f.name.replace('_', '-')}")
            continue
        if typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            parse = _comma_list(args[0], None if args[-1] is Ellipsis else len(args))
        else:
            parse = hint
        group.add_argument(*flags, dest=f.name, action=_Given, type=_none_or(parse) if optional else parse,
                           default=f.default, choices=meta.get("choices"), help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the ``add_config_flags`` flags in ``args`` describe."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def resumed_config(args: argparse.Namespace, config: TrainConfig) -> TrainConfig:
    """``--resume``: the saved config of the run in ``--output`` (or of the given checkpoint), with the flags
    given on the command line checked against it; ``config`` itself when there is no checkpoint.

    Args:
        args: the parsed ``train`` arguments (``given_config`` lists the fields given as flags).
        config: the TrainConfig the flags describe.
    Returns:
        The config the resumed run trains with.
    Raises:
        InputError naming each given flag whose value differs from the saved one.
    """
    if args.resume == "auto":
        found = list_checkpoints(os.path.join(args.output, CHECKPOINTS))
        states = (read_state_or_none(p) for p in reversed(found))  # a damaged newest: the Trainer falls back
        state = next((s for s in states if s is not None), None)
        if state is None:
            return config
    else:
        state = read_state(args.resume)
    saved = saved_config(state)
    given = getattr(args, "given_config", set())
    conflicts = resume_conflicts(config, saved, sorted(given))
    if conflicts:
        said = "; ".join(f"--{name.replace('_', '-')} {mine} (the run has {theirs})" for name, mine, theirs in conflicts)
        raise InputError(f"{said}: --resume continues the run with its saved settings; drop the flag, or pass "
                         "--overwrite instead of --resume to start over")
    return dataclasses.replace(saved, **{name: getattr(config, name) for name in given})


def read_state_or_none(path):
    """``read_state``, or None for a damaged file."""
    try:
        return read_state(path)
    except InputError:
        return None


def read_records(path: str, strict: bool, log=sys.stderr, flag: str = "--train"):
    """``load_preferences``; with ``--strict`` bad lines stop the command (an InputError naming the file)."""
    try:
        return load_preferences(path, strict=strict, log=log)
    except DataError as err:  # strict: every bad line was reported; stop before any work
        raise InputError(f"stopped (--strict): {err}", field=flag) from err


def _add_train(sub):
    p = sub.add_parser("train", help="train a reward model on preference JSONL (LoRA or full, torchrun-ready)")
    p.add_argument("--model", required=True, help=f"base model: {MODEL_HELP}")
    p.add_argument("--train", required=True, help="preference JSONL")
    p.add_argument("--val", help="held-out preference JSONL (evaluated every --eval-every steps and at the end)")
    p.add_argument("--output", required=True, help="output directory (the trained model, checkpoints, plot)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue the run in --output from its newest valid checkpoint (or from the given "
                        "checkpoint folder), with its saved settings")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --output that holds another run (its model is replaced when the new "
                        "one is complete)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept a base model with pickled (.bin) weights: unpickling can run code")
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
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled (.bin) weights: unpickling can run code")
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
        raise InputError(str(err)) from err
    check_input_file(args.train, "--train")
    if args.val:
        check_input_file(args.val, "--val")
    check_output_dir(args.output, args.resume, args.overwrite, cli=True)
    if args.resume:
        config = resumed_config(args, config)
    model = resolve(args.model, tiny_checkpoint, "reward model")
    if os.path.realpath(model) == os.path.realpath(args.output):
        raise InputError(f"{args.output} is the base model's folder: write the trained model elsewhere",
                         field="--output")
    rank = init_distributed()[0]
    log = sys.stderr if rank == 0 else None  # every rank validates; one reports
    train = read_records(args.train, config.strict, log, "--train")
    val = read_records(args.val, config.strict, log, "--val") if args.val else None
    usable_records(train, config.ties, config.batch_size)
    trainer = Trainer(model, config, train, val, output_dir=args.output, log=sys.stderr,
                      allow_pickle=args.allow_pickle)
    result = trainer.train(resume=args.resume, overwrite=args.overwrite)
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
    check_input_file(args.test, "--test")
    if args.val:
        check_input_file(args.val, "--val")
    if args.output:  # a results file of its own: rewritten on each run
        check_output_file(args.output, args.test, overwrite=True)
    check_device(args.device)
    path = resolve(args.model, tiny_checkpoint, "reward model")
    test = read_records(args.test, args.strict, flag="--test")
    val = read_records(args.val, args.strict, flag="--val") if args.val else None
    if not test:
        raise InputError(f"{args.test}: no valid preference record (every line was skipped)", field="--test")
    model, paradigm = load_trained(path, device=args.device, allow_pickle=args.allow_pickle)
    trained = RewardConfig.load(path)
    result = evaluate(model, test, val, paradigm=args.paradigm or paradigm, debias=args.debias,
                      tie_threshold=args.tie_threshold, batch_size=args.batch_size,
                      cot_format=trained.cot_format if trained else None)
    if not result["n_pairs"]:
        raise InputError(f"{args.test}: no pair could be scored (the model rejected all {len(test)}; see above)",
                         field="--test")
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
    return run_command(args.func, args, args.command)


if __name__ == "__main__":
    main()
