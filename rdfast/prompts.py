"""Rendering and answer-token resolution: how chat messages become the text the reward model reads.

A reward is P(answer word | rendered prompt). The messages (laid out by a template, rdfast/templates.py) are
rendered through the model's own chat template with the generation prompt appended. The answer word ("yes")
is tokenised exactly where the model would emit it: right after that generation prompt. User text is data
(``ReservedText``); the task-aware instructions live here too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InputError

# Task-aware instructions (RewardDance, "context scaling"). Any other text is accepted verbatim.
INSTRUCTIONS = {
    "overall": (
        "Judge the image as a whole: how faithfully it follows the text description "
        "and how good its visual quality is."
    ),
    "alignment": (
        "Judge text-image alignment: whether the objects, attributes, counts and spatial relations "
        "in the image match the text description."
    ),
    "quality": (
        "Judge visual quality: sharpness, lighting, composition, anatomy and the absence of artifacts."
    ),
    "motion": (
        "Judge motion quality: smooth, physically plausible movement, stable subjects, and no flicker, "
        "jitter or morphing between frames."
    ),
    "t2v": (
        "Judge text-to-video alignment: whether the subjects, attributes, actions and camera motion in the "
        "video match the text description."
    ),
    "i2v": (
        "Judge image-to-video alignment: whether the video starts from the conditioning image, keeps its "
        "subjects and style consistent, and animates them as the text description says."
    ),
}
DEFAULT_INSTRUCTION = "overall"



def instruction_text(instruction: str | None) -> str:
    """The instruction to render: a named template ('overall', 'alignment', 'quality') or the user's text."""
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string or None, got {instruction!r}")
    return INSTRUCTIONS.get(instruction, instruction)


# The turn markers of render's layout for a tokenizer without a chat template.
FALLBACK_ROLES = ("USER:", "ASSISTANT:")


class ReservedText:
    """The strings a tokenizer reads as control, and the check that keeps them out of user text.

    User text is data: a prompt, instruction or reason holding a special token (``<|im_end|>``,
    ``<|image_pad|>``, ``<IMG_CONTEXT>``) would open or close a chat turn or a media slot, so it is rejected.
    The strings come from the tokenizer itself: ``all_special_tokens`` plus its whole added vocabulary (added
    tokens are matched before BPE, special or not; whitespace-only ones are left out, they control nothing),
    and the "USER:"/"ASSISTANT:" markers when there is no chat template. Tokens the tokenizer matches after
    normalisation (``normalized=True``) are also looked for in the normalised text, as the tokenizer does.

    Args:
        tokenizer: a transformers tokenizer.
    """

    def __init__(self, tokenizer):
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        strings = set(getattr(tokenizer, "all_special_tokens", ()) or ())
        strings.update(str(t) for t in added.values())
        if not getattr(tokenizer, "chat_template", None):
            strings.update(FALLBACK_ROLES)
        self.strings = tuple(s for s in sorted(strings) if s.strip())
        self._raw = _alternation(self.strings)
        normalized = [str(t) for t in added.values() if getattr(t, "normalized", False) and str(t).strip()]
        normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
        self._normalized = _alternation(normalized) if normalized and normalizer is not None else None
        self._normalize = normalizer.normalize_str if self._normalized is not None else None

    def find(self, text: str) -> str | None:
        """The first reserved string ``text`` holds (as the tokenizer would match it), or None."""
        found = self._raw.search(text) if self._raw is not None else None
        if found is None and self._normalized is not None:
            found = self._normalized.search(self._normalize(text))
        return found.group(0) if found is not None else None

    def check(self, text: str, field: str, index: int | None = None) -> None:
        """Raise ``InputError`` naming ``field[index]`` when ``text`` holds a reserved string.

        Args:
            text: user text (a prompt, an instruction, a reason).
            field: the argument it came from ("prompts", "instruction", ...).
            index: its position in that argument (None for a single value).
        """
        token = self.find(text)
        if token is not None:
            what = "a turn marker of the plain prompt layout" if token in FALLBACK_ROLES else \
                "a special token of this model's tokenizer"
            raise InputError(f"holds {token!r}, {what}; user text is data and may not contain it (remove or "
                             "rewrite it)", index, field)


def _alternation(strings) -> re.Pattern | None:
    # longest first, so the reported token is the whole one (e.g. "<|im_end|>", not a shorter prefix)
    ordered = sorted(set(strings), key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def render(tokenizer, messages: list[dict], image_placeholder: str, video_placeholder: str = "<video>",
           template_kwargs: dict | None = None) -> str:
    """Render messages with the model's chat template and the generation prompt.

    Without a chat template, a plain "USER: ... ASSISTANT:" layout is used, media as the placeholders.
    User text must have passed ``ReservedText.check``: templates paste it verbatim. ``template_kwargs``: the
    family's chat-template variables (``Family.chat_template_kwargs``, e.g. Qwen3.5's ``enable_thinking``).
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(template_kwargs or {}))
    parts = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        placeholders = {"image": image_placeholder, "video": video_placeholder}
        body = "".join(placeholders.get(c["type"]) or c["text"] for c in content)
        parts.append(f"{message['role'].upper()}: {body}\n")
    return "".join(parts) + "ASSISTANT:"


@dataclass(frozen=True)
class AnswerTokens:
    yes_word: str
    no_word: str
    yes_id: int
    no_id: int


def resolve_answer_token(tokenizer, rendered_prompt: str, word: str) -> int:
    """The single token id the model emits for ``word`` right after ``rendered_prompt``.

    Raises if the word is not exactly one token there (variants such as " yes"/"Yes" are never summed).
    """
    base = tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(rendered_prompt + word, add_special_tokens=False)["input_ids"]
    if full[: len(base)] != base or len(full) != len(base) + 1:
        pieces = tokenizer.convert_ids_to_tokens(full[len(base) - 1 :]) if len(full) >= len(base) else full
        raise ValueError(
            f"the answer word {word!r} is not a single token after the generation prompt of this tokenizer "
            f"(the end of the prompt plus {word!r} tokenises as {pieces}); pass answer_words=(yes, no) with "
            "words that are single tokens there"
        )
    return full[-1]


def resolve_answer_tokens(tokenizer, image_placeholder: str, answer_words=("yes", "no"),
                          template_kwargs: dict | None = None, messages: list[dict] | None = None) -> AnswerTokens:
    """Resolve the yes/no ids once per tokenizer and template, on ``messages`` rendered with the family's
    ``template_kwargs`` (a template's sample, ``Template.answer_tokens``; None: one image and a neutral text).

    An answer word that is a special token (e.g. ``<|im_end|>``) is an ``InputError`` naming
    ``answer_words[i]``: the reward reads words, never control tokens.
    """
    yes_word, no_word = answer_words
    reserved = ReservedText(tokenizer)
    for i, word in enumerate((yes_word, no_word)):
        reserved.check(word, "answer_words", i)
    if messages is None:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a photo"}]}]
    rendered = render(tokenizer, messages, image_placeholder, template_kwargs=template_kwargs)
    yes_id = resolve_answer_token(tokenizer, rendered, yes_word)
    no_id = resolve_answer_token(tokenizer, rendered, no_word)
    if yes_id == no_id:
        raise ValueError(f"answer words {yes_word!r} and {no_word!r} resolve to the same token id {yes_id}")
    return AnswerTokens(yes_word, no_word, yes_id, no_id)
