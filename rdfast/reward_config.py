"""``rdfast_config.json``: how a trained reward model scores, written beside its weights by rdfast.train.

One dataclass owns the file (write, read, validate, version); ``RewardModel.from_pretrained`` reads it so a
trained model scores exactly as it was trained. Directories written before the file had a version load as
version 1.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

FILE_NAME = "rdfast_config.json"
# 3: base_model may be a hub id or tiny:NAME, and a path is relative to the directory; 4: template is the whole
# layout (rdfast.templates.Template.to_dict), which scoring uses
VERSION = 4
NORMALIZATIONS = ("vocab", "yes_no")


@dataclass
class RewardConfig:
    """What a trained reward-model directory records about how it scores.

    Attributes:
        answer_words: the (yes, no) answer words; their token ids are checked against the tokenizer on load.
        yes_token_id, no_token_id: the answer token ids at training time (None: not recorded).
        normalize: "vocab" (softmax over the vocabulary) or "yes_no" (over the two answer tokens).
        instruction: the model's default task instruction (None: the built-in one).
        num_frames, fps: the model's default video sampling (at most one of the two).
        base_model: for a LoRA adapter directory, the base model as it was given: a hub id, ``tiny:NAME``, or a
            local path relative to the directory (``./...``, ``../...``; older directories: absolute).
            ``rdfast.loading`` records and resolves it.
        paradigm, cot_format, finetune: how it was trained (informational; cot_format also drives explain).
        template: the template it was trained with (``rdfast.templates.Template.to_dict``: layouts, answer words,
            decision prefix), which ``from_pretrained`` scores with; older directories recorded only the question
            texts (informational, ignored).
    """

    answer_words: tuple = ("yes", "no")
    yes_token_id: int | None = None
    no_token_id: int | None = None
    normalize: str = "vocab"
    instruction: str | None = None
    num_frames: int | None = None
    fps: float | None = None
    base_model: str | None = None
    paradigm: str | None = None
    cot_format: str | None = None
    finetune: str | None = None
    template: dict = field(default_factory=dict)
    version: int = VERSION

    def __post_init__(self):
        self.answer_words = tuple(self.answer_words)
        if len(self.answer_words) != 2 or not all(isinstance(w, str) and w for w in self.answer_words):
            raise ValueError(f"answer_words must be two non-empty strings, got {self.answer_words!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("num_frames and fps are both set; a model samples videos one way")
        if self.version > VERSION:
            raise ValueError(f"{FILE_NAME} version {self.version} is newer than this rdfast reads ({VERSION}); "
                             "upgrade rdfast")

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``directory/rdfast_config.json`` (flushed to disk); returns its path."""
        path = os.path.join(os.fspath(directory), FILE_NAME)
        with open(path, "w") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RewardConfig | None:
        """The config of a trained directory, or None when it has none (a plain checkpoint).

        Raises ValueError naming the file when it is not valid JSON or holds unknown or invalid fields.
        """
        path = os.path.join(os.fspath(directory), FILE_NAME)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        data.setdefault("version", 1)  # written before the file was versioned
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown fields {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
