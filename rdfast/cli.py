"""The ``rdfast`` command: score / compare JSONL files or a folder of images, and a demo on the trained toy models.

    rdfast score   --model M --input items.jsonl --output scores.jsonl   # {"prompt", "image"}
    rdfast score   --model M --images DIR --prompt "a red fox" --output scores.csv   # every image of DIR
    rdfast compare --model M --input pairs.jsonl --output scores.jsonl   # {"prompt", "image1", "image2"}
    rdfast demo                                                         # trained toy models, nothing to download
    rdfast demo --model tiny:qwen2_vl                                   # one reward model on random images
    rdfast train | eval | refl | search ...                             # see rdfast.train, rdfast.diffusion
    rdfast serve   --model M --port 8000                                 # HTTP reward server, see rdfast.serve
    torchrun --nproc_per_node 8 -m rdfast.cli score ...                 # shard over ranks, one merged output

M is a checkpoint directory, tiny:FAMILY, toy:NAME or a hub id (rdfast.resolve). Image paths are relative to the input
file's folder; a line's own "instruction" wins over --instruction. A bad line (or an unreadable image of
--images) is reported and skipped; the rest are kept. Output rows carry the input fields, what scored them
(reward_model, template, instruction, answer_words), "line", "input_key" and the score ("score";
"p_image2_better" for compare), as JSONL or CSV (--format; default from the --output suffix). A summary
(count, mean, min, max, top items) ends on stderr. An existing --output is refused unless --resume (continue
a killed job: rows are matched to input lines by content) or --overwrite; the input is never the output, and
two jobs never write one output. Files, folders, flags, the device and the input's fields are checked before
the model loads. A user error is one line on stderr and exit code 2 (``rdfast --debug ...`` shows the
traceback); a run where every line was bad exits with code 1.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .demo import run_scoring_demo, run_toy_demo
from .diffusion import cli as diffusion_cli
from .errors import InputError, check_device, run_command
from .image_folders import folder_records
from .model import RewardModel
from .output_rows import FORMATS, summary_text
from .prompts import INSTRUCTIONS, instruction_text
from .score_jsonl import ScoreJob
from .serve import cli as serve_cli
from .train import cli as train_cli

DTYPES = ("float32", "bfloat16", "float16")
MODEL_HELP = "a checkpoint directory, tiny:FAMILY, toy:NAME or a hub id (org/name[@revision])"


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def checked_instruction(name: str | None, text: str | None) -> str | None:
    """The instruction of ``--instruction`` / ``--instruction-text``. A single word within edit distance 2 of
    a preset name but not one (``aligment``) is a typo, never custom text: an InputError listing the presets.
    ``--instruction-text`` passes any text as it is."""
    if text is not None:
        if not text.strip():
            raise InputError("--instruction-text must not be empty")
        return text
    if name is None:
        return None
    if not name.strip():
        raise InputError("--instruction must not be empty")
    word = name.strip()
    if name not in INSTRUCTIONS and len(word.split()) == 1:
        near = sorted(INSTRUCTIONS, key=lambda preset: edit_distance(word.lower(), preset))
        if edit_distance(word.lower(), near[0]) <= 2:
            raise InputError(f"--instruction {name!r} is not a preset (did you mean {near[0]!r}?); presets: "
                             f"{', '.join(INSTRUCTIONS)}; pass your own text with --instruction-text")
    instruction_text(name)
    return name


def _load(args):
    device = args.device
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("LOCAL_RANK"):
        import torch

        if torch.cuda.is_available():  # one GPU per torchrun process
            device = f"cuda:{os.environ['LOCAL_RANK']}"
    options = {}
    if args.dtype is not None:
        import torch  # heavy: only to name the dtype

        options["dtype"] = getattr(torch, args.dtype)
    if args.template is not None:  # only when given: older RewardModels take no template
        options["template"] = args.template
    try:
        return RewardModel.from_pretrained(args.model, device=device, normalize=args.normalize,
                                           batch_size=args.batch_size, allow_pickle=args.allow_pickle,
                                           answer_words=args.answer_words, device_map=args.device_map, **options)
    except ValueError as err:
        if args.answer_words is not None and "answer word" in str(err):
            raise InputError(f"--answer-words: {err}") from None
        raise


def _output_format(args) -> str:
    if args.format is not None:
        return args.format
    return "csv" if args.output.lower().endswith(".csv") else "jsonl"


def _cmd_score(args, mode):
    # everything the user can get wrong is checked before the model loads (seconds on a real checkpoint)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    instruction = checked_instruction(args.instruction, args.instruction_text)
    if args.answer_words is not None:
        for word in args.answer_words:
            if not word.strip():
                raise InputError(f"--answer-words: an answer word must not be empty, got {args.answer_words}")
        if args.answer_words[0] == args.answer_words[1]:
            raise InputError(f"--answer-words: the yes and no words must differ, got {args.answer_words}")
    check_device(args.device)
    images = getattr(args, "images", None)
    if images is None and (getattr(args, "prompt", None) is not None or getattr(args, "prompts", None) is not None):
        raise InputError("--prompt and --prompts go with --images (a JSONL --input carries its own prompts)")
    records, others = folder_records(images, args.prompt, args.prompts) if images is not None else (None, [])
    source = images if images is not None else args.input
    with ScoreJob(mode, source, args.output, resume=args.resume, overwrite=args.overwrite, records=records,
                  output_format=_output_format(args)) as job:
        if others:
            print(f"rdfast {mode}: {len(others)} file(s) of {images} are not images and were left out: "
                  f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}", file=sys.stderr)
        rm = _load(args)
        spec = os.path.abspath(args.model) if os.path.isdir(args.model) else args.model  # one name per directory
        summary = job.run(rm, instruction, getattr(args, "debias", False), args.batch_size, model_spec=spec)
    import torch.distributed as dist  # heavy: only to close a torchrun process group

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if summary.scored + summary.kept == 0 and summary.skipped:
        what = "lines" if images is None else "images"
        print(f"rdfast {mode}: error: {summary.skipped} of {summary.skipped} {what} of {source} were bad "
              "(reported above); nothing was scored", file=sys.stderr)
        raise SystemExit(1)
    kept = f", {summary.kept} kept from before" if summary.kept else ""
    skipped = f", {summary.skipped} bad {'line' if images is None else 'image'}(s) skipped" if summary.skipped else ""
    print(f"wrote {summary.scored} scores to {args.output}{kept}{skipped}")
    if summary.scores is not None:
        print(summary_text(mode, summary.scores), file=sys.stderr)


TOY_DEMO_FLAGS = ("pipeline", "verifier", "reward", "prompt", "samples", "steps", "seed")


def _cmd_demo(args):
    model = args.model or (f"tiny:{args.family}" if args.family else None)
    given = {k: getattr(args, k) for k in TOY_DEMO_FLAGS if getattr(args, k) is not None}
    if model is None:  # run_toy_demo's own defaults for the flags not given
        if "prompt" in given:
            given["prompts"] = given.pop("prompt")
        return run_toy_demo(args.out, **given)
    if given:
        raise InputError(f"{', '.join('--' + k for k in given)} go with the toy demo (no --model/--family); --model {model} scores "
                         "random images with that one model")
    return run_scoring_demo(args.out, model=model)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rdfast", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    parser.add_argument("--version", action="version", version=f"rdfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for mode in ("score", "compare"):
        p = sub.add_parser(mode, help=f"{mode} a JSONL file" + (" or a folder of images" if mode == "score" else ""))
        p.add_argument("--model", required=True, help=MODEL_HELP)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--input", help="a JSONL file, one item per line")
        if mode == "score":
            source.add_argument("--images", help="a folder: each of its image files, in file-name order")
            prompts = p.add_mutually_exclusive_group()
            prompts.add_argument("--prompt", help="with --images: the prompt of every image")
            prompts.add_argument("--prompts", help="with --images: a text file, one prompt per image in file-name order")
        p.add_argument("--output", required=True)
        p.add_argument("--format", default=None, choices=FORMATS,
                       help="output format (default: csv for an --output ending in .csv, else jsonl)")
        instruction = p.add_mutually_exclusive_group()
        instruction.add_argument("--instruction", default=None,
                                 help=f"a preset ({', '.join(INSTRUCTIONS)}) or text of several words")
        instruction.add_argument("--instruction-text", default=None, help="your own instruction text, as it is")
        p.add_argument("--template", default=None, help="the prompt layout: a preset name or a JSON file")
        p.add_argument("--answer-words", nargs=2, metavar=("YES", "NO"), default=None,
                       help="the answer words the reward reads (default: the model's own, else yes no)")
        p.add_argument("--normalize", default="vocab", choices=("vocab", "yes_no"))
        p.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on CUDA")
        p.add_argument("--device-map", default=None, help="e.g. auto: spread the model over the GPUs (accelerate)")
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
    p = sub.add_parser("demo", help="generate, score, rank and search on the trained toy models (or --model M: "
                                    "score, compare and rank random images with one model)")
    p.add_argument("--out", default="out/demo", help="output folder; the demo replaces its own files there, no others")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=None, help=f"one reward model on random images instead: {MODEL_HELP}")
    which.add_argument("--family", default=None, choices=("qwen2_vl", "qwen2_5_vl", "internvl"),
                       help="as --model tiny:FAMILY")
    p.add_argument("--pipeline", default=None, help="toy demo: the generator (default toy:generator)")
    p.add_argument("--verifier", default=None, help="toy demo: the pointwise reward model (default toy:verifier)")
    p.add_argument("--reward", default=None, help="toy demo: the pairwise reward model (default toy:pairwise)")
    p.add_argument("--prompt", action="append", default=None,
                   help="toy demo: a toy-world prompt such as 'two red circles' (repeatable; default six prompts)")
    p.add_argument("--samples", type=int, default=None, help="toy demo: images per prompt (default 8)")
    p.add_argument("--steps", type=int, default=None, help="toy demo: sampling steps (default 16)")
    p.add_argument("--seed", type=int, default=None, help="toy demo: the first sample's seed (default 0)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as rdfast --debug")
    p.set_defaults(func=_cmd_demo)
    # Training (train, eval), generator alignment (refl, search) and serving add their own subcommands.
    for module in (train_cli, diffusion_cli, serve_cli):
        module.register(sub)
    args = parser.parse_args(argv)
    run_command(args.func, args, args.command)


if __name__ == "__main__":
    main()
