"""Templates: the whole chat-message layout a reward model reads, and the answer words it is scored on.

A template holds one layout per kind of call ("image", "image_pair", "video", "video_pair", "video_condition",
"video_pair_condition"). A layout is a list of chat messages (``{"role": ..., "content": "..."}``) whose text
holds slots: ``{prompt}``, ``{instruction}`` and the media markers of its kind (``{image}``; ``{image1}``
``{image2}``; ``{video}``; ``{video1}`` ``{video2}``; ``{condition}``, the image-to-video conditioning image).
Any other braces are literal text. Slots are filled once, by cutting the layout text at its markers and
pasting the user's text in between: user text is never formatted, so a prompt holding ``{image}`` stays
literal. Media markers appear once each, in the order the media are passed (condition, then item 1, item 2).

``decision_prefix`` says where reasons-first scoring reads the decision: after the generated rationale and
this text (the default: a newline, as ``rdfast train --paradigm cot --cot-format reasons_first`` trains:
reason, newline, answer word, end of turn).

Presets: "rewarddance" (the default layout), "vqascore" (t2v_metrics' VQAScore question, image first, answer
"Yes") and "visionreward" (VisionReward's checklist layout: the media, then the question as it is, answer
"yes"). A template is also read from a JSON file (``Template.to_dict``'s layout) or given as a ``Template``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace

from .errors import InputError
from .prompts import AnswerTokens, instruction_text, resolve_answer_tokens

#: the media markers of each layout, in the order the media of an item are passed
LAYOUT_MEDIA = {
    "image": ("image",), "image_pair": ("image1", "image2"),
    "video": ("video",), "video_pair": ("video1", "video2"),
    "video_condition": ("condition", "video"), "video_pair_condition": ("condition", "video1", "video2"),
}
TEXT_SLOTS = ("prompt", "instruction")
_SLOT = re.compile(r"\{(" + "|".join(TEXT_SLOTS + tuple(sorted({m for ms in LAYOUT_MEDIA.values() for m in ms})))
                   + r")\}")
_DESCRIBE = {"image": "one image", "image_pair": "pairs of images", "video": "one video",
             "video_pair": "pairs of videos", "video_condition": "a video with a conditioning image",
             "video_pair_condition": "pairs of videos with a conditioning image"}


def layout_name(kind: str, pairwise: bool, condition: bool) -> str:
    """The layout a call uses: its media kind ("image"/"video"), one or two judged items, a conditioning image."""
    return kind + ("_pair" if pairwise else "") + ("_condition" if condition else "")


def _pieces(text: str) -> list[tuple[str, str]]:
    """("text", s) and ("slot", name) pieces of a layout text, in order."""
    out, end = [], 0
    for match in _SLOT.finditer(text):
        out += [("text", text[end : match.start()]), ("slot", match.group(1))]
        end = match.end()
    return [p for p in out + [("text", text[end:])] if p != ("text", "")]


@dataclass(frozen=True)
class Template:
    """A chat layout with slots, its answer words and where a reasons-first decision is read.

    Attributes:
        name: what outputs record (e.g. ``rm.template.name``).
        layouts: layout name (``LAYOUT_MEDIA``'s keys) -> list of ``{"role", "content"}`` messages.
        answer_words: (yes, no): P(yes) is the reward; each must be one token after the generation prompt.
        decision_prefix: the text between a reasons-first rationale and the decision (reasoning.py).
    """

    name: str
    layouts: dict = field(hash=False)
    answer_words: tuple = ("yes", "no")
    decision_prefix: str = "\n"

    def __post_init__(self):
        where = f"template {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a template needs a non-empty name, got {self.name!r}")
        if not isinstance(self.layouts, dict) or not self.layouts:
            raise ValueError(f"{where}: layouts must be a non-empty mapping of {sorted(LAYOUT_MEDIA)}")
        words = tuple(self.answer_words)
        if len(words) != 2 or not all(isinstance(w, str) and w for w in words) or words[0] == words[1]:
            raise ValueError(f"{where}: answer_words must be two different non-empty strings, got {self.answer_words!r}")
        object.__setattr__(self, "answer_words", words)
        if not isinstance(self.decision_prefix, str):
            raise ValueError(f"{where}: decision_prefix must be a string")
        for layout, messages in self.layouts.items():
            if layout not in LAYOUT_MEDIA:
                raise ValueError(f"{where}: unknown layout {layout!r}; layouts are {sorted(LAYOUT_MEDIA)}")
            if not isinstance(messages, (list, tuple)) or not messages or not all(
                    isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["role"], str)
                    and isinstance(m["content"], str) for m in messages):
                raise ValueError(f"{where}: layout {layout!r} must be a list of {{'role': str, 'content': str}} messages")
            slots = [name for m in messages for kind, name in _pieces(m["content"]) if kind == "slot"]
            media = tuple(s for s in slots if s not in TEXT_SLOTS)
            if media != LAYOUT_MEDIA[layout]:
                raise ValueError(f"{where}: layout {layout!r} must hold the media markers "
                                 f"{['{' + m + '}' for m in LAYOUT_MEDIA[layout]]} once each, in that order; it holds "
                                 f"{['{' + m + '}' for m in media]}")
            if "prompt" not in slots:
                raise ValueError(f"{where}: layout {layout!r} has no {{prompt}} slot")

    # ---- filling ----------------------------------------------------------------------------------------
    def layout(self, name: str) -> list[dict]:
        """The messages of layout ``name``; an ``InputError`` when this template has none for that call."""
        if name not in self.layouts:
            raise InputError(f"template {self.name!r} has no layout for {_DESCRIBE[name]} (it has: "
                             f"{', '.join(sorted(self.layouts))})", field="template")
        return self.layouts[name]

    def uses_instruction(self, name: str) -> bool:
        """Whether layout ``name`` has an ``{instruction}`` slot."""
        return any(p == ("slot", "instruction") for m in self.layout(name) for p in _pieces(m["content"]))

    def messages(self, name: str, prompt: str, instruction: str | None = None) -> list[dict]:
        """Chat messages for one item of layout ``name``: slots filled once with ``prompt`` and the instruction
        text (``prompts.instruction_text``), media markers as ``{"type": "image"}`` / ``{"type": "video"}``
        items (the conditioning image is an image). Adjacent text items are merged."""
        text = {"prompt": prompt, "instruction": instruction_text(instruction)}
        out = []
        for message in self.layout(name):
            content = []
            for kind, value in _pieces(message["content"]):
                if kind == "slot" and value in text:
                    kind, value = "text", text[value]
                if kind == "text":
                    if content and content[-1]["type"] == "text":
                        content[-1] = {"type": "text", "text": content[-1]["text"] + value}
                    else:
                        content.append({"type": "text", "text": value})
                else:
                    content.append({"type": "video" if value.startswith("video") else "image"})
            out.append({"role": message["role"], "content": content})
        return out

    def answer_tokens(self, tokenizer, family) -> AnswerTokens:
        """The answer words as token ids, resolved where the model emits them after this template's first layout
        (for a neutral prompt) rendered with ``family``'s chat-template variables."""
        sample = self.messages(next(iter(self.layouts)), "a photo")
        return resolve_answer_tokens(tokenizer, family.image_placeholder, self.answer_words,
                                     family.chat_template_kwargs, sample)

    # ---- plain data -------------------------------------------------------------------------------------
    def with_answer_words(self, words) -> Template:
        return replace(self, answer_words=tuple(words))

    def to_dict(self) -> dict:
        """Plain JSON data (what a JSON template file and ``rdfast_config.json`` hold)."""
        return {"name": self.name, "layouts": {k: [dict(m) for m in v] for k, v in self.layouts.items()},
                "answer_words": list(self.answer_words), "decision_prefix": self.decision_prefix}

    @classmethod
    def from_dict(cls, data: dict, where: str = "template") -> Template:
        """A template from ``to_dict`` data; ``ValueError`` naming ``where`` on unknown or invalid fields."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object")
        unknown = sorted(set(data) - {"name", "layouts", "answer_words", "decision_prefix"})
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"{where}: {err}") from err


def _rewarddance() -> Template:
    head = "{instruction}\nText description: {prompt}\n"
    layouts = {}
    for kind in ("image", "video"):
        label = kind.capitalize()
        single = f"{label}: {{{kind}}}\nDoes the {kind} satisfy these criteria well? Answer yes or no."
        pair = (f"{label} 1: {{{kind}1}}\n{label} 2: {{{kind}2}}\nIs {kind} 2 better than {kind} 1? "
                "Answer yes or no.")
        layouts[kind], layouts[f"{kind}_pair"] = head + single, head + pair
        if kind == "video":
            layouts["video_condition"] = head + "Conditioning image: {condition}\n" + single
            layouts["video_pair_condition"] = head + "Conditioning image: {condition}\n" + pair
    return Template("rewarddance", {k: [{"role": "user", "content": v}] for k, v in layouts.items()})


# t2v_metrics' VQAScore (linzhiqiu/t2v_metrics, t2v_metrics/models/vqascore_models/qwen2vl_model.py, forward):
# one user turn, the image or video first, then the question; the answer word "Yes".
VQASCORE_QUESTION = 'Does this figure show "{prompt}"? Please answer Yes or No.'
# VisionReward (THUDM/VisionReward, inference-video.py): each checklist question asked as it is after the media;
# an answer is counted when it is "yes".
PRESETS = {
    "rewarddance": _rewarddance(),
    "vqascore": Template("vqascore", {k: [{"role": "user", "content": f"{{{k}}}{VQASCORE_QUESTION}"}]
                                      for k in ("image", "video")}, ("Yes", "No")),
    "visionreward": Template("visionreward", {k: [{"role": "user", "content": f"{{{k}}}{{prompt}}"}]
                                              for k in ("image", "video")}, ("yes", "no")),
}
DEFAULT = PRESETS["rewarddance"]


def load_template(spec) -> Template:
    """A template from a preset name, a path to a JSON file, a ``to_dict`` mapping or a ``Template``.

    Raises:
        ValueError: an unknown name, a missing or invalid file, or invalid fields (the message names it).
    """
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, dict):
        return Template.from_dict(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"template must be a preset name, a JSON file or a Template, got {type(spec).__name__}")
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise ValueError(f"template {path!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON template ({err})") from err
    if isinstance(data, dict):
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return Template.from_dict(data, path)


def recorded_template(record: dict | None) -> Template | None:
    """The template a trained directory records (``RewardConfig.template``), or None for directories written
    before templates were recorded (their record held only the question texts, for information)."""
    if not record or "layouts" not in record:
        return None
    return Template.from_dict(record, "rdfast_config.json template")
