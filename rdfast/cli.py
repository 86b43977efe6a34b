"""The ``rdfast`` command: score / compare JSONL files, and a demo on the embedded tiny model.

    rdfast score   --model DIR --input items.jsonl --output scores.jsonl   # {"prompt", "image"}
    rdfast compare --model DIR --input pairs.jsonl --output scores.jsonl   # {"prompt", "image1", "image2"}
    rdfast demo                                                           # tiny model, no checkpoint needed
    rdfast train | eval | refl | search ...                               # see rdfast.train, rdfast.diffusion
    rdfast serve   --model DIR --port 8000                                 # HTTP reward server, see rdfast.serve
    torchrun --nproc_per_node 8 -m rdfast.cli score ...                   # shard over ranks, one merged output

Image paths are relative to the input file's folder; a line's own "instruction" wins over --instruction.
A bad line is reported (with its line number) and skipped; the rest are kept. Output lines carry the input
fields, the input line number ("line"), its resume key ("input_key") and "score". An existing --output is
refused unless --resume (continue a killed job: rows are matched to input lines by content) or --overwrite;
the input is never the output, and two jobs never write one output. Files, folders, the device and the
input's fields are checked before the model loads. A user error is one line on stderr and exit code 2
(``rdfast --debug ...`` shows the traceback); a run where every line was bad exits with code 1.
"""
from __future__ import annotations

import argparse
import os
import sys

from .demo import run_demo
from .diffusion import cli as diffusion_cli
from .errors import InputError, check_device, run_command
from .model import RewardModel
from .prompts import instruction_text
from .score_jsonl import ScoreJob
from .serve import cli as serve_cli
from .train import cli as train_cli


def _load(args):
    device = args.device
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("LOCAL_RANK"):
        import torch

        if torch.cuda.is_available():  # one GPU per torchrun process
            device = f"cuda:{os.environ['LOCAL_RANK']}"
    return RewardModel.from_pretrained(args.model, device=device, normalize=args.normalize, batch_size=args.batch_size,
                                       allow_pickle=args.allow_pickle)


def _cmd_score(args, mode):
    # everything the user can get wrong is checked before the model loads (seconds on a real checkpoint)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.instruction is not None:
        try:
            instruction_text(args.instruction)
        except ValueError as err:
            raise InputError(f"--instruction: {err}") from None
    check_device(args.device)
    with ScoreJob(mode, args.input, args.output, resume=args.resume, overwrite=args.overwrite) as job:
        rm = _load(args)
        summary = job.run(rm, args.instruction, getattr(args, "debias", False), args.batch_size)
    import torch.distributed as dist  # heavy: only to close a torchrun process group

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if summary.scored + summary.kept == 0 and summary.skipped:
        print(f"rdfast {mode}: error: {summary.skipped} of {summary.skipped} lines of {args.input} were bad "
              "(reported above); nothing was scored", file=sys.stderr)
        raise SystemExit(1)
    kept = f", {summary.kept} kept from before" if summary.kept else ""
    skipped = f", {summary.skipped} bad line(s) skipped" if summary.skipped else ""
    print(f"wrote {summary.scored} scores to {args.output}{kept}{skipped}")


def _cmd_demo(args):
    run_demo(args.out, family=args.family)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rdfast", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    sub = parser.add_subparsers(dest="command", required=True)
    for mode in ("score", "compare"):
        p = sub.add_parser(mode, help=f"{mode} a JSONL file")
        p.add_argument("--model", required=True, help="local checkpoint directory, tiny:NAME or hub id org/name[@revision]")
        p.add_argument("--input", required=True)
        p.add_argument("--output", required=True)
        p.add_argument("--instruction", default=None, help="'overall', 'alignment', 'quality' or any text")
        p.add_argument("--normalize", default="vocab", choices=("vocab", "yes_no"))
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--device", default=None)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as rdfast --debug")
        existing = p.add_mutually_exclusive_group()
        existing.add_argument("--resume", action="store_true",
                              help="keep the rows already in --output (matched to input lines by content), score the rest")
        existing.add_argument("--overwrite", action="store_true", help="replace an existing --output")
        p.add_argument("--allow-pickle", action="store_true",
                       help="accept pickled (.bin) weights: unpickling can run code")
        if mode == "compare":
            p.add_argument("--debias", action="store_true", help="average both image orders")
        p.set_defaults(func=lambda a, m=mode: _cmd_score(a, m))
    p = sub.add_parser("demo", help="score, compare and rank on the embedded tiny model")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl", "internvl"))
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as rdfast --debug")
    p.set_defaults(func=_cmd_demo)
    # Training (train, eval), generator alignment (refl, search) and serving add their own subcommands.
    for module in (train_cli, diffusion_cli, serve_cli):
        module.register(sub)
    args = parser.parse_args(argv)
    run_command(args.func, args, args.command)


if __name__ == "__main__":
    main()
