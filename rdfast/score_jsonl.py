"""The JSONL scoring job behind ``rdfast score`` / ``rdfast compare`` (and the demo).

Image paths are relative to the input file's folder. A bad line is reported (with its line number) and
skipped; the rest are kept. Output lines carry the input fields, the input line number and "score".
``resume=True`` continues a killed job: lines already written are kept and skipped. Under torchrun the input
is sharded over ranks and merged back in input order.
"""
from __future__ import annotations

import json
import os
import sys

from .errors import InputError
from .images import load_image

FIELDS = {"score": ("image",), "compare": ("image1", "image2")}


def read_jsonl(path: str, image_fields: tuple[str, ...], log=None, keep=None):
    """Yield (line_number, record, images) for valid lines (those ``keep(line_number)`` accepts); report and
    skip bad ones."""
    log = log or sys.stderr  # looked up per call: sys.stderr may be replaced (tests, notebooks)
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or (keep is not None and not keep(number)):
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


def _chunks(rows, size: int):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prefetched(iterator):
    """Yield from ``iterator`` while a background thread already reads (and decodes images of) the next item."""
    from concurrent.futures import ThreadPoolExecutor

    done = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, done)
        while True:
            item = future.result()
            if item is done:
                return
            future = pool.submit(next, iterator, done)
            yield item


def _lines_done(path: str) -> set[int]:
    """Input line numbers already in an output file (for resuming); a torn last line is cut off."""
    if not os.path.exists(path):
        return set()
    done, good_bytes = set(), 0
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                done.add(int(json.loads(raw)["line"]))
            except (ValueError, KeyError, TypeError):
                break
            good_bytes += len(raw)
    with open(path, "r+b") as fh:
        fh.truncate(good_bytes)
    return done


def _distributed():
    """(rank, world size) under torchrun, initialising the process group once; (0, 1) otherwise."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def score_file(rm, mode: str, input_path: str, output_path: str, instruction=None, debias=False, batch_size=8,
               log=None, resume=False) -> int:
    """Score a JSONL file, streaming it in chunks (images of the next chunk load while this one is scored).

    Items the model rejects are reported and skipped. ``resume=True`` keeps lines already in
    ``output_path`` and scores only the rest. Under torchrun each rank scores every world-th line into
    its own part file; rank 0 then merges them into ``output_path`` in input order.
    Returns the number of lines this process wrote.
    """
    from tqdm import tqdm

    log = log or sys.stderr
    rank, world = _distributed()
    part = output_path if world == 1 else f"{output_path}.rank{rank}-of-{world}"
    done = _lines_done(part) if resume else set()
    with open(input_path) as fh:
        total = sum(1 for k, line in enumerate(fh, start=1) if line.strip() and (k - 1) % world == rank and k not in done)
    rows = (
        row for row in read_jsonl(input_path, FIELDS[mode], log, keep=lambda k: (k - 1) % world == rank and k not in done)
    )
    written = 0
    with open(part, "a" if resume else "w") as out, tqdm(total=total, desc=f"rdfast {mode}", unit="item", file=log,
                                                         disable=rank != 0) as bar:
        for chunk in _prefetched(_chunks(rows, batch_size)):
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
                    print(f"{input_path}:{chunk[err.index][0]}: skipped: {err}", file=log)
                    bar.update(1)
                    chunk = chunk[: err.index] + chunk[err.index + 1 :]
                    continue
                for (number, record, _), value in zip(chunk, scores.tolist()):
                    out.write(json.dumps({**record, "line": number, "score": value}) + "\n")
                out.flush()  # a killed job keeps every finished chunk (resume picks up from there)
                written += len(chunk)
                bar.update(len(chunk))
                break
    if world > 1:
        _merge_parts(output_path, rank, world)
    return written


def _merge_parts(output_path: str, rank: int, world: int) -> None:
    import torch.distributed as dist

    dist.barrier()
    if rank == 0:
        parts = [f"{output_path}.rank{r}-of-{world}" for r in range(world)]
        rows = [line for p in parts for line in open(p) if line.strip()]
        rows.sort(key=lambda line: json.loads(line)["line"])
        tmp = output_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.writelines(rows)
        os.replace(tmp, output_path)
        for p in parts:
            os.remove(p)
    dist.barrier()
