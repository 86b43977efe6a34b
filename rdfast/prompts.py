"""Prompt templates and answer-token resolution: the one place that decides what the reward model reads.

A reward is P(answer word | rendered prompt). The prompt is a chat message holding the image(s), the
task-aware instruction, the user's text prompt and a yes/no question, rendered through the model's own
chat template with the generation prompt appended. The answer word ("yes") is tokenised exactly where the
model would emit it: right after that generation prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

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
}
DEFAULT_INSTRUCTION = "overall"

POINTWISE_QUESTION = "Does the image satisfy these criteria well? Answer yes or no."
PAIRWISE_QUESTION = "Is image 2 better than image 1? Answer yes or no."


def instruction_text(instruction: str | None) -> str:
    """The instruction to render: a named template ('overall', 'alignment', 'quality') or the user's text."""
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string or None, got {instruction!r}")
    return INSTRUCTIONS.get(instruction, instruction)


def build_messages(prompt: str, n_images: int, instruction: str | None = None) -> list[dict]:
    """Chat messages for one item: 1 image (pointwise) or 2 images (pairwise: image 1 is the reference).

    Images appear as ``{"type": "image"}`` items, which chat templates render as the family's placeholder.
    """
    if n_images not in (1, 2):
        raise ValueError(f"a reward prompt holds 1 or 2 images, got {n_images}")
    # Instruction and prompt first, then the reference image: everything before image 2 is shared by all
    # candidates compared against one reference, so it can run once (a shared prefix).
    text = f"{instruction_text(instruction)}\nText description: {prompt}\n"
    if n_images == 1:
        content = [{"type": "text", "text": text}, {"type": "image"}, {"type": "text", "text": "\n" + POINTWISE_QUESTION}]
    else:
        content = [
            {"type": "text", "text": text + "Image 1: "},
            {"type": "image"},
            {"type": "text", "text": "\nImage 2: "},
            {"type": "image"},
            {"type": "text", "text": "\n" + PAIRWISE_QUESTION},
        ]
    return [{"role": "user", "content": content}]


def render(tokenizer, messages: list[dict], image_placeholder: str) -> str:
    """Render messages with the model's chat template and the generation prompt.

    Without a chat template, a plain "USER: ... ASSISTANT:" layout is used, images as ``image_placeholder``.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        body = "".join(image_placeholder if c["type"] == "image" else c["text"] for c in content)
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


def resolve_answer_tokens(tokenizer, image_placeholder: str, answer_words=("yes", "no")) -> AnswerTokens:
    """Resolve the yes/no ids once per tokenizer, on a rendered pointwise prompt."""
    yes_word, no_word = answer_words
    rendered = render(tokenizer, build_messages("a photo", 1), image_placeholder)
    yes_id = resolve_answer_token(tokenizer, rendered, yes_word)
    no_id = resolve_answer_token(tokenizer, rendered, no_word)
    if yes_id == no_id:
        raise ValueError(f"answer words {yes_word!r} and {no_word!r} resolve to the same token id {yes_id}")
    return AnswerTokens(yes_word, no_word, yes_id, no_id)
