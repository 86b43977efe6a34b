"""Batches the losses consume: ``Collator`` turns preference records into a ``Batch`` for one paradigm."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import InputError

PARADIGMS = ("pairwise", "pointwise", "regressive", "cot")
COT_FORMATS = ("decision_first", "reasons_first")
IGNORE = -100  # label of positions without a language-model target


@dataclass
class Batch:
    """What one forward consumes.

    items: the rows as ``Encoded`` items, described by the paradigm:
      pairwise: one row per (record, order); pointwise/regressive: rows 2k, 2k+1 = image1, image2 of pair k;
      cot: one row per record, right-padded, with ``labels``. The scoring engine runs these directly.
    inputs: the rows collated as transformers kwargs (``RewardModel.collate``), built on first use, so a batch
      trained through the engine never pads or copies pixels it does not need.
    target: float32 [P] P(image 2 better) per pairwise row (pairwise, cot) or per pair (pointwise, regressive).
    labels: int64 [B, T] next-token targets for cot (IGNORE elsewhere), ``decision_pos`` int64 [B] the index
      of the decision token in each row (its prediction is read at ``decision_pos - 1``).
    records: the records in the batch (for accuracy by instruction and messages).
    """

    items: list
    target: torch.Tensor
    records: list
    collate: Callable[[list], dict] = field(repr=False)
    labels: torch.Tensor | None = None
    decision_pos: torch.Tensor | None = None
    _inputs: dict | None = field(default=None, repr=False)

    @property
    def inputs(self) -> dict:
        if self._inputs is None:
            self._inputs = self.collate(self.items)
        return self._inputs

    def units(self, ties: str) -> int:
        """How many terms the summed loss of this batch holds (for normalising by the global batch)."""
        keep = self.target != 0.5 if ties == "skip" else torch.ones_like(self.target, dtype=torch.bool)
        n = int(keep.sum())
        if self.labels is not None:  # cot: decision tokens (kept rows) + reason tokens (all rows' labels)
            reason_tokens = int((self.labels != IGNORE).sum()) - self.labels.shape[0]
            return n + reason_tokens
        return n


class Collator:
    """Turns records into a ``Batch`` for one paradigm.

    pairwise: each record gives (image1, image2, target) and, with ``both_orders``, (image2, image1, 1 - target),
    so the judge learns the comparison and not the position. pointwise/regressive: each image alone with the
    pointwise question. cot: the pairwise prompt followed by the decision and the reason, in ``cot_format``
    ("decision_first": ``yes`` + newline + reason + end of turn; "reasons_first": reason + the template's
    ``decision_prefix`` (a newline by default) + ``yes`` + end of turn, where reasons-first scoring reads it); the decision is the resolved yes/no token id itself, so it is read at the same position
    the scorer reads.

    Video records are encoded as the scorer encodes videos (``num_frames`` or ``fps`` sample the frames; None:
    the model's own default), with the conditioning image first for image-to-video; a batch may mix images
    and videos.

    Records the model rejects (e.g. too long with their images) are reported with their line numbers and left
    out (``strict`` raises instead).
    """

    def __init__(self, rm, paradigm: str, both_orders: bool = True, instruction=None, cot_format="decision_first",
                 strict: bool = False, log=sys.stderr, num_frames: int | None = None, fps: float | None = None):
        if paradigm not in PARADIGMS:
            raise ValueError(f"paradigm must be one of {PARADIGMS}, got {paradigm!r}")
        if cot_format not in COT_FORMATS:
            raise ValueError(f"cot_format must be one of {COT_FORMATS}, got {cot_format!r}")
        self.rm, self.paradigm, self.both_orders = rm, paradigm, both_orders
        self.instruction, self.cot_format, self.strict, self.log = instruction, cot_format, strict, log
        self.num_frames, self.fps = num_frames, fps
        if instruction is not None:  # the default instruction is user text too: refused before any batch
            rm.encoder.reserved.check(instruction, "instruction")
        self._newline = None
        self.skipped = []  # (where, message) of records left out

    def _encode(self, rec, images):
        try:
            return rec.encode(self.rm, images, self.instruction, self.num_frames, self.fps)
        except InputError as err:
            # "prompts[0]" means nothing for one record; a field without an index ("instruction") does
            message = str(err).split(": ", 1)[-1] if err.index is not None else str(err)
            if self.strict:
                raise InputError(f"{rec.where()}: {message}") from err
            self.skipped.append((rec.where(), message))
            if self.log is not None:
                print(f"{rec.where()}: skipped: {message}", file=self.log)
            return None

    def __call__(self, records) -> Batch | None:
        """A Batch, or None when every record was rejected."""
        if self.paradigm == "pairwise":
            return self._pairwise(records)
        if self.paradigm == "cot":
            return self._cot(records)
        return self._pointwise(records)

    def _pairwise(self, records):
        items, target, kept = [], [], []
        for rec in records:
            fwd = self._encode(rec, rec.candidates)
            if fwd is None:
                continue
            items.append(fwd)
            target.append(rec.target)
            if self.both_orders:
                items.append(self._encode(rec, rec.candidates[::-1]))
                target.append(1.0 - rec.target)
            kept.append(rec)
        if not items:
            return None
        return Batch(items, torch.tensor(target, dtype=torch.float32), kept, self._collate_left)

    def _pointwise(self, records):
        items, target, kept = [], [], []
        for rec in records:
            a = self._encode(rec, rec.candidates[:1])
            b = self._encode(rec, rec.candidates[1:]) if a is not None else None
            if a is None or b is None:
                continue
            items += [a, b]
            target.append(rec.target)
            kept.append(rec)
        if not items:
            return None
        return Batch(items, torch.tensor(target, dtype=torch.float32), kept, self._collate_left)

    def continuation(self, decision_id: int, reason: str | None) -> tuple[list[int], int]:
        """Token ids after the prompt for one cot target, and the index of the decision among them."""
        tok = self.rm.tokenizer
        end = [tok.eos_token_id]  # the chat template's end of turn (<|im_end|> for Qwen and InternVL)
        if not reason:
            return [decision_id] + end, 0
        reason_ids = tok(reason.strip(), add_special_tokens=False)["input_ids"]
        if self._newline is None:
            self._newline = tok("\n", add_special_tokens=False)["input_ids"]
        if self.cot_format == "decision_first":
            return [decision_id] + self._newline + reason_ids + end, 0
        # where the scorer reads a reasons-first decision (rdfast/reasoning.py): the template's decision prefix
        ids = reason_ids + tok(self.rm.template.decision_prefix, add_special_tokens=False)["input_ids"]
        return ids + [decision_id] + end, len(ids)

    def _cot(self, records):
        items, target, kept, conts = [], [], [], []
        for rec in records:
            enc = self._encode(rec, rec.candidates)
            if enc is None:
                continue
            try:  # the reason is user text too (load-time validation may not have seen this tokenizer)
                if rec.reason is not None:
                    self.rm.encoder.reserved.check(rec.reason, "'reason'")
            except InputError as err:
                self._encode_failed(rec, str(err))
                continue
            # a tie's decision token is trained softly by the loss; the sequence carries "yes" as a placeholder
            decision = self.rm.no_token_id if rec.label == 1 else self.rm.yes_token_id
            cont, at = self.continuation(decision, rec.reason)
            if len(enc.input_ids) + len(cont) > self.rm.max_length:
                self._encode_failed(rec, f"too long with its reason ({len(enc.input_ids) + len(cont)} tokens)")
                continue
            prompt_len = len(enc.input_ids)
            enc.input_ids = enc.input_ids + cont
            items.append(enc)
            conts.append((prompt_len, len(cont), prompt_len + at))
            target.append(rec.target)
            kept.append(rec)
        if not items:
            return None
        batch = Batch(items, torch.tensor(target, dtype=torch.float32), kept,
                      lambda rows: self.rm.collate(rows, "right"))  # right padding: prompt positions line up from 0
        inputs = batch.inputs
        labels = torch.full(inputs["input_ids"].shape, IGNORE, dtype=torch.long)
        decision_pos = torch.empty(len(items), dtype=torch.long)
        for row, (start, n, at) in enumerate(conts):
            labels[row, start : start + n] = inputs["input_ids"][row, start : start + n].cpu()
            decision_pos[row] = at
        batch.labels, batch.decision_pos = labels, decision_pos
        return batch

    def _collate_left(self, rows):
        return self.rm.collate(rows, "left")

    def _encode_failed(self, rec, message):
        if self.strict:
            raise InputError(f"{rec.where()}: {message}")
        self.skipped.append((rec.where(), message))
        if self.log is not None:
            print(f"{rec.where()}: skipped: {message}", file=self.log)
