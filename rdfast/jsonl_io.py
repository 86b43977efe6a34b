"""Safe JSONL files: reading that never ends a job on one bad line, and outputs that are never clobbered.

Reading (``read_jsonl``): UTF-8 with an optional byte-order mark; every line is one JSON object. A line
that is not valid UTF-8, not JSON, not an object, or holds ``NaN``/``Infinity`` or a lone surrogate
(``"\\ud800"``: valid JSON escapes, but no text a tokenizer can encode) is one bad line with its number,
never the end of the job. Line numbers count every physical line (``\\n``), blank ones too.

Writing (``OutputFile``): an output is refused when it is the input (also through a symlink or another
spelling of the path), or when it exists and the caller asked neither to resume nor to overwrite. The
output holds an OS advisory lock (``fcntl.flock``) for the whole job, so a second job on it refuses; the
kernel drops the lock when a process dies, so a job killed with SIGKILL can be resumed. Rows are written
with ``allow_nan=False``: NaN never reaches a file.

Resuming (``content_key``): a line's key is its ``id`` field when it has one (a string or an integer),
else a hash of its content; a key seen before in the same file gets its occurrence index (``#1``, ...).
Rows found on resume are matched to the input by key, never by line number alone, so an edited input
neither skips nor duplicates lines.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import InputError

BOM = b"\xef\xbb\xbf"
KEY_FIELD = "input_key"


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line: ``record`` when it is a valid JSON object, else ``error`` says why not."""

    number: int  # 1-based physical line number
    text: str | None  # the decoded line (None when it is not UTF-8)
    record: dict | None
    error: str | None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (write numbers as finite values or strings)")


def parse_record(text: str) -> dict:
    """One JSON object from one line; raises ValueError naming what is wrong (bad JSON, not an object,
    NaN/Infinity, a lone surrogate)."""
    record = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(record, dict):
        raise ValueError("a line must hold a JSON object")
    if "\\u" in text:  # strictly decoded UTF-8 holds no surrogates; only \u escapes can make them
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"a string holds a lone surrogate ({err.object[err.start]!r}), which is not text") from None
    return record


def read_jsonl(path: str | os.PathLike) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSONL file, good or bad (see the module docstring).

    Args:
        path: the file.
    Returns:
        An iterator of JsonlLine in file order.
    """
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield JsonlLine(number, None, None, f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})")
                continue
            if not text.strip():
                continue
            try:
                yield JsonlLine(number, text, parse_record(text), None)
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                yield JsonlLine(number, text, None, str(err))


def content_key(record: dict, seen: dict) -> str:
    """The resume key of one input record (see the module docstring); ``seen`` counts keys of earlier lines.

    Args:
        record: the parsed input line.
        seen: a dict shared by the lines of one file, in file order (updated here).
    Returns:
        ``id:<json id>#<occurrence>`` or ``sha256:<hex>#<occurrence>``.
    """
    ident = record.get("id")
    if isinstance(ident, (str, int)) and not isinstance(ident, bool):
        base = "id:" + json.dumps(ident)
    else:  # sorted keys: the same content is the same line however its keys were ordered or spaced
        canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        base = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
    occurrence = seen.get(base, 0)
    seen[base] = occurrence + 1
    return f"{base}#{occurrence}"


def dumps_row(row: dict) -> str:
    """One output line (with its newline); raises ValueError for NaN or infinity anywhere in ``row``."""
    return json.dumps(row, allow_nan=False) + "\n"


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_input_file(path: str, flag: str = "--input") -> None:
    """Raise InputError unless ``path`` is an existing regular file (named by the CLI ``flag``)."""
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a folder, not a JSONL file")
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: no such file")


def check_output_file(path: str, input_path: str | None = None, resume: bool = False, overwrite: bool = False,
                      flag: str = "--output") -> None:
    """Raise InputError when writing ``path`` would clobber something or cannot work: it is the input, it
    is a folder, its folder is missing, or it exists and neither ``resume`` nor ``overwrite`` is set."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a folder; give a file name in it")
    if not os.path.isdir(folder):
        raise InputError(f"{flag} {path}: no such folder {folder}")
    if input_path is not None and os.path.exists(path) and os.path.exists(input_path):
        same = os.path.samefile(path, input_path)
    else:
        same = input_path is not None and os.path.realpath(path) == os.path.realpath(input_path)
    if same:
        raise InputError(f"{flag} {path} is the input file; write the output elsewhere")
    if os.path.exists(path) and not (resume or overwrite):
        raise InputError(f"{flag} {path} exists; pass --resume to continue it or --overwrite to replace it")


def parse_rows(data: bytes) -> tuple[list[dict], list[str]]:
    """The rows of an output file's bytes, and what was wrong with the lines that are not rows: a torn last
    line (it lost its newline, so it may be cut short), text that is not a JSON object. Such lines are dropped
    (their input lines are scored again), never appended to."""
    rows, problems = [], []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if number == len(lines):
            if raw.strip():
                problems.append(f"line {number} lost its newline (a torn write); it is dropped and rescored")
            continue
        if not raw.strip():
            continue
        try:
            rows.append(parse_record(raw.decode("utf-8")))
        except ValueError as err:  # UnicodeDecodeError is a ValueError
            problems.append(f"line {number} is not a row ({err}); it is dropped and rescored")
    return rows, problems


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"{path} is being written by another job (it holds the file's lock)") from None
    held, now = os.fstat(fd), os.stat(path)
    if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):  # the other job replaced it while we opened it
        os.close(fd)
        raise InputError(f"{path} is being written by another job (it was replaced while opening it)")


class OutputFile:
    """A JSONL output held (locked) by this process for one job; see the module docstring.

    Args:
        path: the output file.
        input_path: the input file (refused as the output), or None.
        resume: keep an existing output (``previous_rows`` reads it, ``rewrite`` repairs it).
        overwrite: replace an existing output (truncated once the lock is held, never before).
        encode_row: one row as its line (default: JSON, ``dumps_row``; ``rewrite`` always writes JSON).
        header: written before the first row of an empty output (a CSV header).
    Raises:
        InputError: the output would clobber something (``check_output_file``) or another job holds it.
    """

    def __init__(self, path: str, input_path: str | None = None, resume: bool = False, overwrite: bool = False,
                 encode_row=dumps_row, header: str = ""):
        check_output_file(path, input_path, resume, overwrite)
        self.path = os.fspath(path)
        self.encode_row, self.header = encode_row, header
        flags = os.O_RDWR | os.O_CREAT | (0 if resume or overwrite else os.O_EXCL)
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileExistsError:
            raise InputError(f"--output {path} exists; pass --resume to continue it or --overwrite to replace it") from None
        _lock(fd, self.path)
        if overwrite and not resume:
            os.ftruncate(fd, 0)
        self._file = os.fdopen(fd, "r+b")
        self._file.seek(0, os.SEEK_END)
        self._replaced = []  # files this job replaced: kept open (and locked) until it ends

    def previous_rows(self) -> tuple[list[dict], list[str]]:
        """The rows already in the output, and what was wrong with its lines that are not rows (``parse_rows``)."""
        self._file.seek(0)
        data = self._file.read()
        self._file.seek(0, os.SEEK_END)
        return parse_rows(data)

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the output's content by ``rows``, atomically: a locked temporary sibling is written, synced
        and renamed into place, so a kill leaves the old or the new file, never a mix."""
        folder, name = os.path.split(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # locked before it has the output's name
            new = os.fdopen(fd, "r+b")
            new.write("".join(dumps_row(r) for r in rows).encode("utf-8"))
            new.flush()
            os.fsync(new.fileno())
            os.chmod(tmp, os.stat(self.path).st_mode & 0o777)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._replaced.append(self._file)
        self._file = new

    def append(self, rows: list[dict]) -> None:
        """Append rows (one write, flushed: a killed job keeps every finished call)."""
        header = self.header if self._file.tell() == 0 else ""
        self._file.write((header + "".join(self.encode_row(r) for r in rows)).encode("utf-8"))
        self._file.flush()

    def close(self) -> None:
        """Sync the output and release its lock."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        for fh in [*self._replaced, self._file]:
            fh.close()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
