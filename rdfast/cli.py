"""The ``rdfast`` command: score / compare JSONL files, and a demo on the embedded tiny model.

    rdfast score   --model DIR --input items.jsonl --output scores.jsonl   # {"prompt", "image"}
    rdfast compare --model DIR --input pairs.jsonl --output scores.jsonl   # {"prompt", "image1", "image2"}
    rdfast demo                                                           # tiny model, no checkpoint needed

Image paths are relative to the input file's folder. A bad line is reported (with its line number) and
skipped; the rest are kept. Output lines carry the input fields, the input line number and "score".
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .images import InputError, load_image

FIELDS = {"score": ("image",), "compare": ("image1", "image2")}


def read_jsonl(path: str, image_fields: tuple[str, ...], log=sys.stderr):
    """Yield (line_number, record, images) for valid lines; report and skip bad ones."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise InputError("a line must hold a JSON object")
                prompt = record.get("prompt")
                if not isinstance(prompt, str) or not prompt.strip():
                    raise InputError(f"'prompt' must be a non-empty string, got {prompt!r}")
                images = []
                for field in image_fields:
                    if not isinstance(record.get(field), str):
                        raise InputError(f"missing image path field {field!r}")
                    images.append(load_image(os.path.join(base, record[field]), None, field))
            except (ValueError, InputError) as err:
                print(f"{path}:{number}: skipped: {err}", file=log)
                continue
            yield number, record, images


def score_file(rm, mode: str, input_path: str, output_path: str, instruction=None, debias=False, batch_size=8, log=sys.stderr) -> int:
    """Score a JSONL file; returns the number of lines written. Items the model rejects are reported and skipped."""
    from tqdm import tqdm

    fields = FIELDS[mode]
    rows = list(read_jsonl(input_path, fields, log))
    written = 0
    with open(output_path, "w") as out, tqdm(total=len(rows), desc=f"rdfast {mode}", unit="item", file=log) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            while chunk:
                columns = list(zip(*(images for _, _, images in chunk)))
                prompts = [record["prompt"] for _, record, _ in chunk]
                try:
                    if mode == "score":
                        scores = rm.score(images=list(columns[0]), prompts=prompts, instruction=instruction)
                    else:
                        scores = rm.compare(images1=list(columns[0]), images2=list(columns[1]), prompts=prompts,
                                            instruction=instruction, debias=debias)
                except InputError as err:
                    if err.index is None:
                        raise
                    number = chunk[err.index][0]
                    print(f"{input_path}:{number}: skipped: {err}", file=log)
                    bar.update(1)
                    chunk = chunk[: err.index] + chunk[err.index + 1 :]
                    continue
                for (number, record, _), value in zip(chunk, scores.tolist()):
                    out.write(json.dumps({**record, "line": number, "score": value}) + "\n")
                written += len(chunk)
                bar.update(len(chunk))
                break
    return written


def _load(args):
    from .model import RewardModel

    return RewardModel.from_pretrained(args.model, device=args.device, normalize=args.normalize, batch_size=args.batch_size)


def _cmd_score(args, mode):
    rm = _load(args)
    n = score_file(rm, mode, args.input, args.output, args.instruction, getattr(args, "debias", False), args.batch_size)
    print(f"wrote {n} scores to {args.output}")


def _cmd_demo(args):
    from .demo import run_demo

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
        if mode == "compare":
            p.add_argument("--debias", action="store_true", help="average both image orders")
        p.set_defaults(func=lambda a, m=mode: _cmd_score(a, m))
    p = sub.add_parser("demo", help="score, compare and rank on the embedded tiny model")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl", "internvl"))
    p.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
