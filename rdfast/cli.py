"""The ``rdfast`` command: score / compare JSONL files, and a demo on the embedded tiny model.

    rdfast score   --model DIR --input items.jsonl --output scores.jsonl   # {"prompt", "image"}
    rdfast compare --model DIR --input pairs.jsonl --output scores.jsonl   # {"prompt", "image1", "image2"}
    rdfast demo                                                           # tiny model, no checkpoint needed
    rdfast train | eval | refl | search ...                               # see rdfast.train, rdfast.diffusion
    torchrun --nproc_per_node 8 -m rdfast.cli score ...                   # shard over ranks, one merged output

Image paths are relative to the input file's folder. A bad line is reported (with its line number) and
skipped; the rest are kept. Output lines carry the input fields, the input line number and "score".
``--resume`` continues a killed job: lines already written are kept and skipped.
"""
from __future__ import annotations

import argparse
import os

from .demo import run_demo
from .diffusion import cli as diffusion_cli
from .errors import run_command
from .model import RewardModel
from .score_jsonl import score_file
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
    rm = _load(args)
    n = score_file(rm, mode, args.input, args.output, args.instruction, getattr(args, "debias", False),
                   args.batch_size, resume=args.resume)
    print(f"wrote {n} scores to {args.output}")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cmd_demo(args):
    run_demo(args.out, family=args.family)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rdfast", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for mode in ("score", "compare"):
        p = sub.add_parser(mode, help=f"{mode} a JSONL file")
        p.add_argument("--model", required=True, help="local checkpoint directory")
        p.add_argument("--input", required=True)
        p.add_argument("--output", required=True)
        p.add_argument("--instruction", default=None, help="'overall', 'alignment', 'quality' or any text")
        p.add_argument("--normalize", default="vocab", choices=("vocab", "yes_no"))
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--device", default=None)
        p.add_argument("--resume", action="store_true", help="keep lines already in --output, score the rest")
        p.add_argument("--allow-pickle", action="store_true",
                       help="accept pickled (.bin) weights: unpickling can run code")
        if mode == "compare":
            p.add_argument("--debias", action="store_true", help="average both image orders")
        p.set_defaults(func=lambda a, m=mode: _cmd_score(a, m))
    p = sub.add_parser("demo", help="score, compare and rank on the embedded tiny model")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl", "internvl"))
    p.set_defaults(func=_cmd_demo)
    # Training (train, eval) and generator alignment (refl, search) add their own subcommands.
    for module in (train_cli, diffusion_cli):
        module.register(sub)
    args = parser.parse_args(argv)
    run_command(args.func, args, args.command)


if __name__ == "__main__":
    main()
