"""Preference data: the JSONL format and validation with line numbers (``batches.py`` turns records into the
batches the losses consume).

One JSON object per line::

    {"prompt": "two red circles", "image1": "a.png", "image2": "b.png", "label": 2,
     "instruction": "alignment", "reason": "Image 2 shows two red circles; image 1 shows three."}

- ``prompt``: non-empty text; ``image1``, ``image2``: image paths, relative to the JSONL file's folder.
  Video pairs give ``video1``, ``video2`` instead (video files, or folders of frame images), and for
  image-to-video an optional ``condition_image`` (the image the clips were generated from)::

    {"prompt": "the cat jumps", "video1": "a.mp4", "video2": "b_frames/", "label": 1, "instruction": "t2v"}

- ``label``: ``1`` (image 1 preferred), ``2`` (image 2 preferred) or ``"tie"``.
- ``instruction`` (optional): a named template (``overall``, ``alignment``, ``quality``) or any text.
- ``reason`` (optional): a teacher's explanation, used by chain-of-thought training.

Other keys are kept in ``PreferenceRecord.extra`` and otherwise ignored. A bad line (bad JSON, missing
field, missing or unreadable image, unknown label, empty prompt) is reported as ``path:line: skipped:
why`` and left out; ``strict=True`` reports every bad line and then raises ``DataError``. User text is data:
a prompt, instruction or reason holding a special token of the model's tokenizer (``<|im_end|>``,
``<|image_pad|>``, ...) is a bad record too, found once the tokenizer is known (``reject_special_tokens``,
which the Trainer and ``evaluate`` run before any step).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..images import load_image
from ..jsonl_io import read_jsonl
from ..prompts import ReservedText
from ..videos import load_video

TIE = "tie"
LABELS = (1, 2, TIE)


class DataError(ValueError):
    """Bad preference data. ``errors`` lists ``(line_number, message)`` for every bad line."""

    def __init__(self, path, errors):
        self.path, self.errors = path, list(errors)
        shown = "\n".join(f"{path}:{n}: {msg}" for n, msg in self.errors[:20])
        more = f"\n... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(f"{len(self.errors)} bad line(s) in {path}:\n{shown}{more}")


@dataclass
class PreferenceRecord:
    """One preference pair: ``image1``/``image2`` (paths, PIL images or [3,H,W] tensors) or ``video1``/``video2``
    (paths, frame lists or [T,3,H,W] tensors) with an optional ``condition_image`` (image-to-video)."""

    prompt: str
    image1: object = None
    image2: object = None
    label: int | str = None
    instruction: str | None = None
    reason: str | None = None
    line: int | None = None  # 1-based line in the source file (None for records built in memory)
    source: str | None = None
    extra: dict = field(default_factory=dict)
    video1: object = None
    video2: object = None
    condition_image: object = None

    def __post_init__(self):
        self.label = parse_label(self.label)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError(f"'prompt' must be a non-empty string, got {self.prompt!r}")
        has_images = self.image1 is not None or self.image2 is not None
        has_videos = self.video1 is not None or self.video2 is not None
        if has_images == has_videos:
            raise InputError("a record holds either image1 and image2 or video1 and video2")
        first, second = self.media_fields
        if getattr(self, first) is None or getattr(self, second) is None:
            raise InputError(f"{first!r} and {second!r} are both required")
        if self.condition_image is not None and not has_videos:
            raise InputError("'condition_image' goes with video1/video2 (image-to-video)")

    @property
    def kind(self) -> str:
        """"image" or "video": what the two candidates are."""
        return "video" if self.video1 is not None else "image"

    @property
    def media_fields(self) -> tuple[str, str]:
        return ("video1", "video2") if self.kind == "video" else ("image1", "image2")

    @property
    def candidates(self) -> tuple:
        """(first, second) candidate: the two images or the two videos."""
        first, second = self.media_fields
        return getattr(self, first), getattr(self, second)

    @property
    def target(self) -> float:
        """P(image 2 is better): 1.0 for label 2, 0.0 for label 1, 0.5 for a tie."""
        return {1: 0.0, 2: 1.0, TIE: 0.5}[self.label]

    @property
    def is_tie(self) -> bool:
        return self.label == TIE

    def encode(self, rm, candidates, default_instruction=None, num_frames=None, fps=None):
        """This record's prompt with ``candidates`` (one: pointwise, two: pairwise) as ``rm.encode`` encodes them:
        its own instruction (else ``default_instruction``), and its conditioning image first for image-to-video."""
        instruction = self.instruction if self.instruction is not None else default_instruction
        condition = [self.condition_image] if self.condition_image is not None else None
        return rm.encode([self.prompt], [[m] for m in candidates], instruction, kind=self.kind, condition=condition,
                         num_frames=num_frames, fps=fps)[0]

    def check_text(self, reserved: ReservedText) -> None:
        """Raise ``InputError`` naming the field ('prompt', 'instruction' or 'reason') that holds a special token.

        Args:
            reserved: the tokenizer's reserved strings (``ReservedText(tokenizer)``).
        """
        for name in ("prompt", "instruction", "reason"):
            text = getattr(self, name)
            if isinstance(text, str):
                reserved.check(text, repr(name))

    def where(self) -> str:
        """``path:line`` for messages (``<memory>`` for records built in Python)."""
        return f"{self.source or '<memory>'}:{self.line if self.line is not None else '?'}"


def media_group(rec) -> tuple:
    """Records that can share one ``RewardModel`` call have the same group: (kind, has a conditioning image)."""
    return rec.kind, rec.condition_image is not None


def media_kwargs(records) -> dict:
    """``RewardModel.compare`` keyword arguments for records of one ``media_group``: images1/images2 or
    videos1/videos2, plus condition_images for image-to-video."""
    base = f"{records[0].kind}s"
    firsts, seconds = zip(*(r.candidates for r in records))
    out = {f"{base}1": list(firsts), f"{base}2": list(seconds)}
    if records[0].condition_image is not None:
        out["condition_images"] = [r.condition_image for r in records]
    return out


def parse_label(label) -> int | str:
    """1, 2 or "tie" (also accepts "1", "2", "Tie"); anything else raises InputError."""
    if isinstance(label, bool):  # bool is an int subclass: True would pass as 1
        raise InputError(f"unknown label {label!r}; expected 1, 2 or \"tie\"")
    if isinstance(label, str):
        text = label.strip().lower()
        if text in ("1", "2"):
            return int(text)
        if text == TIE:
            return TIE
    elif isinstance(label, int) and label in (1, 2):
        return label
    raise InputError(f"unknown label {label!r}; expected 1, 2 or \"tie\"")


def parse_line(text: str, base_dir: str, check_images: bool = True) -> PreferenceRecord:
    """Validate one JSONL line; raises InputError (or ValueError for bad JSON) naming what is wrong."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise InputError("a line must hold a JSON object")
    kind = "video" if ("video1" in record or "video2" in record) else "image"
    if kind == "video" and ("image1" in record or "image2" in record):
        raise InputError("a line holds either image1/image2 or video1/video2, not both")
    media_keys = ("video1", "video2") if kind == "video" else ("image1", "image2")
    for key in ("prompt", *media_keys, "label"):
        if key not in record:
            raise InputError(f"missing field {key!r}")
    paths = {}
    for key in media_keys + (("condition_image",) if "condition_image" in record else ()):
        value = record[key]
        if not isinstance(value, str) or not value:
            raise InputError(f"{key!r} must be a {'video' if key.startswith('video') else 'image'} path, got {value!r}")
        path = os.path.join(base_dir, value)
        if check_images:  # raises "... not found" / "cannot read ..." naming the file
            if key.startswith("video"):
                load_video(path, None, key)
            else:
                load_image(path, None, key)
        paths[key] = path
    instruction = record.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise InputError(f"'instruction' must be a non-empty string when given, got {instruction!r}")
    reason = record.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InputError(f"'reason' must be a string when given, got {type(reason).__name__}")
    known = {"prompt", "image1", "image2", "video1", "video2", "condition_image", "label", "instruction", "reason"}
    return PreferenceRecord(record["prompt"], label=record["label"], instruction=instruction, reason=reason or None,
                            extra={k: v for k, v in record.items() if k not in known}, **paths)


def load_preferences(path, strict: bool = False, check_images: bool = True, log=sys.stderr) -> list[PreferenceRecord]:
    """Read and validate a preference JSONL file.

    Every bad line is reported to ``log`` as ``path:line: skipped: why`` and left out; with ``strict=True``
    all bad lines are reported and then ``DataError`` is raised (its ``errors`` hold ``(line, why)``).
    ``check_images=True`` opens every image once (catches missing and corrupt files before training).
    Returns the valid records in file order, each with its ``line`` number.
    """
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    records, errors = [], []
    for line in read_jsonl(path):  # UTF-8 (BOM allowed); an undecodable line is one bad line, not the end
        try:
            if line.error is not None:
                raise InputError(line.error)
            rec = parse_line(line.text, base_dir, check_images)
        except (ValueError, InputError) as err:  # json.JSONDecodeError is a ValueError
            errors.append((line.number, str(err)))
            if log is not None:
                print(f"{path}:{line.number}: {'error' if strict else 'skipped'}: {err}", file=log)
            continue
        rec.line, rec.source = line.number, path
        records.append(rec)
    if strict and errors:
        raise DataError(path, errors)
    return records


def reject_special_tokens(records, tokenizer, strict: bool = False, log=sys.stderr) -> list[PreferenceRecord]:
    """The records whose user text (prompt, instruction, reason) holds no special token of ``tokenizer``.

    Each rejected record is reported as ``path:line: skipped: 'field': holds '<token>' ...`` and left out;
    with ``strict=True`` every one is reported and then ``DataError`` is raised. Run it before any training
    step or evaluation: such text would otherwise open a chat turn or a media slot.

    Args:
        records: PreferenceRecords (``load_preferences`` or built in memory).
        tokenizer: the reward model's tokenizer (``rm.tokenizer``).
        strict: raise ``DataError`` after reporting, instead of skipping.
        log: where the reports go (None: nowhere).
    Returns:
        The kept records, in order.
    """
    reserved = ReservedText(tokenizer)
    kept, errors = [], []
    for rec in records:
        try:
            rec.check_text(reserved)
        except InputError as err:
            errors.append((rec, str(err)))
            if log is not None:
                print(f"{rec.where()}: {'error' if strict else 'skipped'}: {err}", file=log)
            continue
        kept.append(rec)
    if strict and errors:
        sources = sorted({rec.source or "<memory>" for rec, _ in errors})
        raise DataError(", ".join(sources), [(rec.line, message) for rec, message in errors])
    return kept


def save_preferences(records, path) -> None:
    """Write records with path images as JSONL (paths are written as given)."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            first, second = r.media_fields
            row = {"prompt": r.prompt, first: os.fspath(r.candidates[0]), second: os.fspath(r.candidates[1]),
                   "label": r.label}
            if r.condition_image is not None:
                row["condition_image"] = os.fspath(r.condition_image)
            if r.instruction is not None:
                row["instruction"] = r.instruction
            if r.reason is not None:
                row["reason"] = r.reason
            fh.write(json.dumps({**row, **r.extra}) + "\n")


class PreferenceDataset(torch.utils.data.Dataset):
    """Records as a map-style dataset; ``Collator`` is its ``collate_fn`` (for a DataLoader in your own loop).

        loader = DataLoader(PreferenceDataset("train.jsonl"), batch_size=8, shuffle=True,
                            collate_fn=Collator(rm, "pairwise"))
    """

    def __init__(self, source, strict: bool = False, check_images: bool = True, log=sys.stderr):
        if isinstance(source, (str, os.PathLike)):
            source = load_preferences(source, strict=strict, check_images=check_images, log=log)
        self.records = list(source)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index) -> PreferenceRecord:
        return self.records[index]


def usable_records(records: list[PreferenceRecord], ties: str, batch_size: int) -> list[PreferenceRecord]:
    """The records a run trains on (ties left out with ``ties="skip"``); InputError if fewer than a batch.

    Args:
        records: the training records.
        ties: ``TrainConfig.ties`` ("soft" or "skip").
        batch_size: ``TrainConfig.batch_size``.
    Returns:
        The records kept, in order.
    """
    kept = [r for r in records if not (ties == "skip" and r.is_tie)]
    if len(kept) < batch_size:
        raise InputError(f"{len(kept)} usable training records, fewer than batch_size={batch_size}")
    return kept
