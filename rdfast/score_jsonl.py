"""The scoring job behind ``rdfast score`` / ``rdfast compare`` (and the demo): a JSONL file, or the records
of an image folder (``rdfast.image_folders``), in; JSONL or CSV out.

Image paths are relative to the input file's folder. A line may carry its own ``instruction`` (it wins over
the job's). A bad line (undecodable, not a JSON object, missing fields, a missing image, an item the model
rejects, a non-finite score) is reported with its line number and skipped; the rest are kept. Output rows
carry the input fields, what scored them (``rdfast.output_rows``: reward_model, template, instruction,
answer_words), the input line number ("line"), the line's resume key ("input_key", see ``rdfast.jsonl_io``)
and the score: "score" for ``score``, "p_image2_better" for ``compare`` (P(yes) that image 2 is better than
image 1; a resumed output of an older rdfast has its "score" renamed). CSV output has one column per field
(``output_rows.CsvRows``) and is written by one process without --resume.

``ScoreJob`` checks the files and claims (locks) the output before any model is loaded; ``run`` scores.
With ``resume=True`` rows already in the output are matched to the input by content key: rows whose input
line changed or is gone are dropped, a torn last line is repaired, and rows written by an older rdfast
(no "input_key") are kept where their line still holds the same record. A resumed output ends in input
order. Under torchrun the input is sharded over ranks by key and merged back in input order.
"""
from __future__ import annotations

import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from .errors import InputError
from .images import load_image
from .jsonl_io import (
    KEY_FIELD,
    JsonlLine,
    OutputFile,
    check_input_file,
    check_output_file,
    content_key,
    is_finite_number,
    parse_rows,
    read_jsonl,
)
from .output_rows import FORMATS, METADATA_FIELDS, CsvRows, row_metadata

FIELDS = {"score": ("image",), "compare": ("image1", "image2")}
SCORE_FIELDS = {"score": "score", "compare": "p_image2_better"}
OUTPUT_FIELDS = ("line", KEY_FIELD, "score", "p_image2_better")  # written over the input's fields
#: what must match for rows of an earlier run to be kept on --resume
SAME_SCORER = ("reward_model", "template", "answer_words")


@dataclass
class JobSummary:
    """What one process of a scoring job did."""

    scored: int  # lines scored and written now
    skipped: int  # bad lines, reported and skipped
    kept: int  # rows already in the output (resume)
    scores: list | None = None  # (item label, score) of every row of the output (rank 0 only under torchrun)


@dataclass
class _Item:
    number: int
    key: str | None = None
    record: dict | None = None
    images: list | None = None
    error: str | None = None


class ScoreJob:
    """A scoring job whose files are checked and whose output is held (locked) before a model is loaded.

    Args:
        mode: "score" (fields prompt, image) or "compare" (prompt, image1, image2).
        input_path: the input JSONL; with ``records``, the folder their image paths are relative to.
        output_path: the output (never the input; refused if it exists unless resume or overwrite).
        resume: keep the rows already in the output and score the rest.
        overwrite: replace an existing output.
        log: where reports go (default: stderr).
        records: the input lines as records instead of a file (an image folder's, ``image_folders``); a bad
            one is reported by its image path.
        output_format: "jsonl" or "csv" (one process, no resume).
    Raises:
        InputError: a missing or unusable file, an empty input, an input where no line has the mode's
            fields, or an output another job holds.
    """

    def __init__(self, mode: str, input_path: str, output_path: str, *, resume: bool = False,
                 overwrite: bool = False, log=None, records: list[dict] | None = None, output_format: str = "jsonl"):
        if mode not in FIELDS:
            raise ValueError(f"mode must be one of {sorted(FIELDS)}, got {mode!r}")
        if output_format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
        self.mode, self.input_path, self.output_path = mode, os.fspath(input_path), os.fspath(output_path)
        self.score_field, self.records = SCORE_FIELDS[mode], records
        self.log = log or sys.stderr  # looked up per job: sys.stderr may be replaced (tests, notebooks)
        if records is None:
            check_input_file(self.input_path)
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if output_format == "csv" and (resume or self.world > 1):
            raise InputError("--format csv is written by one process without --resume (both read JSONL back)")
        # under torchrun rank 0 creates the merged output at once: the other ranks must not take it for an old one
        check_output_file(self.output_path, self.input_path, resume or self.rank != 0, overwrite)
        self.numbers, self.keys, fields = self._scan()
        self.part = self.output_path if self.world == 1 else f"{self.output_path}.rank{self.rank}-of-{self.world}"
        self._created, self._created_final = not os.path.exists(self.part), not os.path.exists(self.output_path)
        csv_rows = CsvRows([*fields, *METADATA_FIELDS, "line", KEY_FIELD, self.score_field]) if output_format == "csv" else None
        self.out = OutputFile(self.part, self.input_path, resume, overwrite,
                              **({"encode_row": csv_rows.line, "header": csv_rows.header()} if csv_rows else {}))
        self.final = None  # under torchrun, rank 0 holds the merged output too
        try:
            if self.world > 1 and self.rank == 0:
                self.final = OutputFile(self.output_path, self.input_path, resume, overwrite)
            self.done: dict[str, dict] = self._resume() if resume else {}
        except BaseException:
            self.close()
            raise

    # ---- before the model: scan, resume ---------------------------------------------------------------
    def _lines(self):
        """The input's lines: the file's, or the records given."""
        if self.records is None:
            return read_jsonl(self.input_path)
        return (JsonlLine(k, None, record, None) for k, record in enumerate(self.records, start=1))

    def _where(self, number: int) -> str:
        """Where a line is, for reports: file:line, or an image folder's image path."""
        if self.records is None:
            return f"{self.input_path}:{number}"
        return os.path.join(self.input_path, self.records[number - 1]["image"])

    def _scan(self) -> tuple[list[int], dict[int, str], list[str]]:
        """Non-blank line numbers, the resume key of each readable line and the fields of all lines in order of
        appearance; checks the mode's fields."""
        needed = ("prompt", *FIELDS[self.mode])
        numbers, keys, seen, first, fits, fields = [], {}, {}, None, False, {}
        for line in self._lines():
            numbers.append(line.number)
            if line.record is not None:
                keys[line.number] = content_key(line.record, seen)
                fields.update(dict.fromkeys(line.record))
                first = first or line
                fits = fits or all(isinstance(line.record.get(f), str) for f in needed)
        if not numbers:
            raise InputError(f"--input {self.input_path} has no lines")
        if first is not None and not fits:
            other = next((m for m, f in FIELDS.items() if m != self.mode and all(k in first.record for k in f)), None)
            hint = f"; is it input for `rdfast {other}`?" if other else ""
            raise InputError(f"--input {self.input_path}: no line has the fields {', '.join(needed)} that "
                             f"`rdfast {self.mode}` needs (line {first.number} has {', '.join(first.record)}){hint}")
        return numbers, keys, [f for f in fields if f not in (*METADATA_FIELDS, *OUTPUT_FIELDS, KEY_FIELD)]

    def _mine(self, number: int, key: str | None) -> bool:
        """Whether this rank scores the line: by key (stable when lines move), by number for unreadable lines."""
        if self.world == 1:
            return True
        return (zlib.crc32(key.encode()) if key is not None else number - 1) % self.world == self.rank

    def _resume(self) -> dict[str, dict]:
        """Rows already written, by key, for lines of this rank that still hold the same record; repairs the
        output (dropped rows, torn line, older format, line numbers, order) when it differs."""
        rows, problems = self.out.previous_rows()
        kept = self._match(rows, problems, self.part)
        ordered = sorted(kept.values(), key=lambda r: r["line"])
        if problems or ordered != rows:
            self.out.rewrite(ordered)
        if self.world > 1 and os.path.exists(self.output_path):  # the merged output of an earlier run
            with open(self.output_path, "rb") as fh:
                merged, problems = parse_rows(fh.read())
            for key, row in self._match(merged, problems, self.output_path).items():
                kept.setdefault(key, row)
        return kept

    def _match(self, rows: list[dict], problems: list[str], path: str) -> dict[str, dict]:
        """The rows (by key, with their current line number) whose line still holds the same record on this
        rank; reports the rest."""
        line_of = {key: number for number, key in self.keys.items()}
        legacy = self._legacy_keys(rows)
        kept: dict[str, dict] = {}
        for k, row in enumerate(rows):
            key = row.get(KEY_FIELD) if KEY_FIELD in row else legacy.get(k)
            if self.score_field not in row and "score" in row:  # written before compare named its score
                row = {(self.score_field if f == "score" else f): v for f, v in row.items()}
            if (key in line_of and key not in kept and self._mine(line_of[key], key)
                    and is_finite_number(row.get(self.score_field))):
                kept[key] = {**row, "line": line_of[key], KEY_FIELD: key}
        for problem in problems:
            print(f"{path}: {problem}", file=self.log)
        if len(kept) < len(rows):
            print(f"{path}: {len(rows) - len(kept)} row(s) match no line of {self.input_path} (edited, removed or "
                  "duplicated lines, or a non-finite score); they are dropped and those lines rescored", file=self.log)
        return kept

    def _legacy_keys(self, rows: list[dict]) -> dict[int, str]:
        """Keys for rows an older rdfast wrote (input fields, "line", "score"; no key): a row keeps its line's
        key only if that line still holds the same record."""
        wanted = {k: row.get("line") for k, row in enumerate(rows) if KEY_FIELD not in row}
        if not wanted:
            return {}
        records = {line.number: line.record for line in self._lines() if line.record is not None}
        plain = lambda r: {f: v for f, v in r.items() if f not in OUTPUT_FIELDS}
        return {k: self.keys[n] for k, n in wanted.items()
                if isinstance(n, int) and n in records and plain(records[n]) == plain(rows[k])}

    # ---- scoring -------------------------------------------------------------------------------------
    def _items(self):
        """The lines still to score on this rank, their images loaded; bad lines carry their error."""
        base = os.path.abspath(self.input_path) if self.records is not None else os.path.dirname(os.path.abspath(self.input_path))
        seen = {}
        for line in self._lines():
            key = content_key(line.record, seen) if line.record is not None else None
            if not self._mine(line.number, key) or key in self.done:
                continue
            if line.error is not None:
                yield _Item(line.number, error=line.error)
                continue
            record = line.record
            try:
                prompt, instruction = record.get("prompt"), record.get("instruction")
                if not isinstance(prompt, str) or not prompt.strip():
                    raise InputError(f"'prompt' must be a non-empty string, got {prompt!r}")
                if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
                    raise InputError(f"'instruction' must be a non-empty string when given, got {instruction!r}")
                images = []
                for field in FIELDS[self.mode]:
                    if not isinstance(record.get(field), str):
                        raise InputError(f"missing image path field {field!r}")
                    images.append(load_image(os.path.join(base, record[field]), None, field))
            except InputError as err:
                yield _Item(line.number, error=str(err))
                continue
            yield _Item(line.number, key, record, images)

    def run(self, rm, instruction: str | None = None, debias: bool = False, batch_size: int = 8,
            model_spec: str | None = None) -> JobSummary:
        """Score the lines not yet in the output, streaming them in chunks (the images of the next chunk load
        while this one is scored); each chunk is appended and flushed, so a killed job keeps it.

        Args:
            rm: a RewardModel (anything with ``score`` / ``compare`` and ``answers`` as RewardModel's).
            instruction: for lines without their own "instruction" (None: the model's own).
            debias: compare only: average both image orders.
            batch_size: lines per chunk.
            model_spec: the model as the user named it, recorded in each row and compared on resume (default:
                the loaded path, recorded only).
        Returns:
            JobSummary of this process.
        Raises:
            InputError: ``resume`` found rows another model, template or answer words scored.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        # a spec the caller names is compared on resume; the loaded path is only recorded ("tiny:X" is a path too)
        same = SAME_SCORER if model_spec is not None else SAME_SCORER[1:]
        if model_spec is None:
            model_spec = getattr(getattr(getattr(rm, "model", None), "config", None), "_name_or_path", None)
        scorer = row_metadata(rm, model_spec, instruction)
        for row in self.done.values():
            differs = [f"{f} {row[f]!r}" for f in same if f in row and row[f] != scorer[f]]
            if differs:
                raise InputError(f"--output {self.output_path} holds rows scored with {', '.join(differs)}, not "
                                 f"this job's ({', '.join(repr(scorer[f]) for f in same)}); resume with "
                                 "the same model or pass --overwrite")
        if self.world > 1:
            _init_distributed()
        todo = sum(1 for n in self.numbers if self._mine(n, self.keys.get(n)) and self.keys.get(n) not in self.done)
        self.skipped, scored, ends = 0, 0, []
        self.scores = [(self._label(row, row["line"]), row[self.score_field]) for row in self.done.values()]
        with tqdm(total=todo, desc=f"rdfast {self.mode}", unit="item", file=self.log, disable=self.rank != 0) as bar:
            self._bar = bar
            for chunk in _prefetched(_chunks(self._items(), batch_size)):
                good = []
                for item in chunk:
                    if item.error is not None:
                        self._skip(item.number, item.error)
                    else:
                        good.append(item)
                groups: dict[str | None, list[_Item]] = {}
                for item in good:
                    own = item.record.get("instruction")
                    groups.setdefault(own if own is not None else instruction, []).append(item)
                scores = {}
                for group_instruction, items in groups.items():
                    scores.update(self._score_group(rm, items, group_instruction, debias))
                rows = []
                for item in good:
                    value = scores.get(item.number)
                    if value is not None and not is_finite_number(value):
                        self._skip(item.number, f"non-finite score {value} (broken weights?)")
                    elif value is not None:
                        own = item.record.get("instruction")
                        used = row_metadata(rm, model_spec, own if own is not None else instruction)
                        rows.append({**item.record, **used, "line": item.number, KEY_FIELD: item.key,
                                     self.score_field: value})
                        self.scores.append((self._label(item.record, item.number), value))
                if rows:
                    self.out.append(rows)
                    ends.append((rows[0]["line"], rows[-1]["line"]))
                scored += len(rows)
                bar.update(len(rows))
        if self.done and ends and ends[0][0] < max(r["line"] for r in self.done.values()):
            self.out.rewrite(sorted(self.out.previous_rows()[0], key=lambda r: r["line"]))  # back in input order
        if self.world > 1:
            self._merge()
        return JobSummary(scored, self.skipped, len(self.done), self.scores if self.rank == 0 else None)

    def _label(self, record: dict, number: int) -> str:
        """How the summary names a line: its id, or its (judged) image, with its line number for a file."""
        ident = record.get("id")
        name = str(ident) if ident is not None else str(record.get(FIELDS[self.mode][-1]))
        return name if self.records is not None else f"{name} (line {number})"

    def _skip(self, number: int, why) -> None:
        tqdm.write(f"{self._where(number)}: skipped: {why}", file=self.log)  # above the bar, not glued to it
        self._bar.update(1)
        self.skipped += 1

    def _score_group(self, rm, items: list[_Item], instruction, debias: bool) -> dict[int, float]:
        """Scores of items sharing one instruction, by line number; an item the model rejects is skipped and
        the rest are scored again."""
        while items:
            columns = list(zip(*(item.images for item in items)))
            prompts = [item.record["prompt"] for item in items]
            try:
                if self.mode == "score":
                    values = rm.score(images=list(columns[0]), prompts=prompts, instruction=instruction)
                else:
                    values = rm.compare(images1=list(columns[0]), images2=list(columns[1]), prompts=prompts,
                                        instruction=instruction, debias=debias)
            except InputError as err:
                if err.index is None or not 0 <= err.index < len(items):  # names no item: it is every item's
                    for item in items:
                        self._skip(item.number, err)
                    return {}
                self._skip(items[err.index].number, err)
                items = items[: err.index] + items[err.index + 1 :]
                continue
            return {item.number: value for item, value in zip(items, values.tolist())}
        return {}

    def _merge(self) -> None:
        """torchrun: rank 0 merges the rows of every rank (and of a resumed merged output) in input order."""
        import torch.distributed as dist  # heavy: only under torchrun

        self.out.close()
        dist.barrier()
        if self.rank == 0:
            parts = [f"{self.output_path}.rank{r}-of-{self.world}" for r in range(self.world)]
            rows = {row[KEY_FIELD]: row for row in self.done.values()}
            for path in parts:
                with open(path, "rb") as fh:
                    rows.update((row[KEY_FIELD], row) for row in parse_rows(fh.read())[0])
            self.final.rewrite(sorted(rows.values(), key=lambda r: r["line"]))
            self.scores = [(self._label(r, r["line"]), r[self.score_field]) for r in rows.values()]
            for path in parts:
                os.remove(path)
        dist.barrier()

    def close(self) -> None:
        """Release the output(s); an output this job created and left empty is removed (a rerun needs no
        --overwrite after a job that wrote nothing)."""
        outputs = [(self.out, self._created)] + ([(self.final, self._created_final)] if self.final else [])
        for output, created in outputs:
            empty = created and os.path.exists(output.path) and os.path.getsize(output.path) == 0
            output.close()
            if empty:
                os.remove(output.path)

    def __enter__(self) -> ScoreJob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def score_file(rm, mode: str, input_path: str, output_path: str, instruction=None, debias=False, batch_size=8,
               log=None, resume=False, overwrite=False, output_format="jsonl") -> JobSummary:
    """Score a JSONL file with a loaded model: ``ScoreJob(...).run(...)`` (see both for the arguments).

    Returns:
        JobSummary (lines scored now, skipped, kept from an earlier run, the scores of the output).
    """
    with ScoreJob(mode, input_path, output_path, resume=resume, overwrite=overwrite, log=log,
                  output_format=output_format) as job:
        return job.run(rm, instruction, debias, batch_size)


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
    done = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, done)
        while True:
            item = future.result()
            if item is done:
                return
            future = pool.submit(next, iterator, done)
            yield item


def _init_distributed() -> None:
    """Initialise the process group once under torchrun (for the merge's barriers)."""
    import torch  # heavy: only under torchrun
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
