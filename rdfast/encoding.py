"""From a call's arguments to token ids and media: validation first, then rendering and tokenising.

Every item is checked before any model work (a bad item raises an ``InputError`` naming it); each distinct
image or video (object, or path) is loaded and preprocessed once. ``collate`` pads encoded items into the
keyword inputs of the underlying transformers model (the plain padded path and ``build_inputs``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from . import prompts as P
from .errors import InputError
from .families.base import EncodedMedia, Family
from .images import as_image_list, load_image
from .templates import DEFAULT, Template, layout_name
from .videos import as_video_list, load_video


@dataclass
class EncodedItem:
    """One sequence ready to batch: token ids and its media (in sequence order) in the family's layout.

    n_condition: leading conditioning images (image-to-video) before the judged media.
    template: the template that laid it out (rdfast/templates.py).
    """

    input_ids: list[int]
    media: list[EncodedMedia]
    prompt: str
    instruction: str | None
    index: int
    n_condition: int = 0
    template: Template = DEFAULT


def media_columns(first, second, video_first, video_second, pairwise: bool = False) -> tuple[list, str]:
    """(columns, kind) from the image or video arguments of a call; exactly one kind may be given."""
    has_images = first is not None or second is not None
    has_videos = video_first is not None or video_second is not None
    if has_images and has_videos:
        raise InputError("pass images or videos, not both (use condition_images for image-to-video context)")
    if has_videos:
        return ([video_first, video_second] if pairwise else [video_first]), "video"
    return ([first, second] if pairwise else [first]), "image"


class Encoder:
    """Validates, renders and tokenises items for one tokenizer and VLM family.

    Args:
        tokenizer: the model's tokenizer (its chat template renders the prompt).
        family: the VLM family (pixels and media-token expansion).
        max_length: the longest sequence the model takes; longer items are rejected by index.
    """

    def __init__(self, tokenizer, family: Family, max_length: int):
        self.tokenizer, self.family, self.max_length = tokenizer, family, max_length
        self.reserved = P.ReservedText(tokenizer)  # user text holding a special token is rejected

    def encode(self, prompts, columns: list, instruction: str | None, *, kind: str = "image", condition=None,
               num_frames: int | None = None, fps: float | None = None,
               template: Template = DEFAULT) -> list[EncodedItem]:
        """Validate every item up front, then tokenise.

        Args:
            prompts: N non-empty strings, none holding a special token of the tokenizer (nor the instruction).
            columns: [media] (pointwise) or [media1, media2] (pairwise), images or videos as ``kind`` says.
            instruction: the task instruction (a named one or free text; None: the default).
            kind: "image" or "video".
            condition: optional N conditioning images (image-to-video; videos only).
            num_frames, fps: how video files and folders are sampled (at most one).
            template: the layout (rdfast/templates.py); it must have one for this call, and an instruction
                needs its ``{instruction}`` slot.
        Returns:
            One EncodedItem per prompt, in order.
        """
        base = f"{kind}s"
        fields = [base] if len(columns) == 1 else [f"{base}1", f"{base}2"]
        kinds = [kind] * len(fields)
        if prompts is None or any(a is None for a in columns):
            raise InputError(f"{', '.join(fields)} and prompts are required")
        if isinstance(prompts, str):
            raise InputError("expected a list of prompts, got a single string", field="prompts")
        prompts = list(prompts)
        lists = [as_image_list(a, f) if kind == "image" else as_video_list(a, f) for a, f in zip(columns, fields)]
        if condition is not None:
            if kind != "video":
                raise InputError("condition_images go with videos (image-to-video)", field="condition_images")
            lists.insert(0, as_image_list(condition, "condition_images"))
            fields.insert(0, "condition_images")
            kinds.insert(0, "image")
        for f, col in zip(fields, lists):
            if len(col) != len(prompts):
                raise InputError(f"{f} has {len(col)} items but prompts has {len(prompts)}")
        if not prompts:
            raise InputError("empty batch", field="prompts")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"prompt must be a non-empty string, got {prompt!r}", i, "prompts")
            self.reserved.check(prompt, "prompts", i)
        P.instruction_text(instruction)  # validates it before any work
        layout = layout_name(kind, len(columns) == 2, condition is not None)
        template.layout(layout)  # the template has one for this call
        if instruction is not None:
            self.reserved.check(instruction, "instruction")
            if not template.uses_instruction(layout):
                raise InputError(f"template {template.name!r} has no {{instruction}} slot; pass no instruction "
                                 "with it", field="instruction")
        # The same image or video (object, or path) given several times is loaded and preprocessed once; the
        # engine then encodes it once too (its vision-feature cache keys on the EncodedMedia).
        encoded: dict = {}
        columns_encoded = []
        for f, col, k in zip(fields, lists, kinds):
            out = []
            for i, media in enumerate(col):
                key = ("path", os.path.abspath(os.fspath(media))) if isinstance(media, (str, os.PathLike)) else ("obj", id(media))
                if (k, key) not in encoded:
                    try:
                        if k == "image":
                            encoded[k, key] = self.family.encode_image(load_image(media, i, f))
                        else:
                            encoded[k, key] = self.family.encode_video(*load_video(media, i, f, num_frames, fps))
                    except InputError as err:
                        raise InputError(str(err).split(": ", 1)[-1], i, f) from err
                out.append(encoded[k, key])
            columns_encoded.append(out)
        n_condition = 1 if condition is not None else 0
        return [self.tokenize(prompt, [col[i] for col in columns_encoded], instruction, i, n_condition, template)
                for i, prompt in enumerate(prompts)]

    def tokenize(self, prompt: str, media: list[EncodedMedia], instruction: str | None, index: int,
                 n_condition: int = 0, template: Template = DEFAULT) -> EncodedItem:
        """Render one item through the chat template, expand its media tokens and tokenise it.

        User text is data: ``encode`` has rejected any prompt or instruction holding a special token, so the
        only special tokens here are the template's own and the media placeholders it rendered.
        """
        layout = layout_name(media[-1].kind, len(media) - n_condition == 2, n_condition > 0)
        messages = template.messages(layout, prompt, instruction)
        text = P.render(self.tokenizer, messages, self.family.image_placeholder, self.family.video_placeholder,
                        self.family.chat_template_kwargs)
        text = self.family.expand_placeholders(text, media, index)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            raise InputError(
                f"the item is {len(ids)} tokens long with its images, more than the model's context of "
                f"{self.max_length} tokens",
                index,
                "prompts",
            )
        return EncodedItem(ids, media, prompt, instruction, index, n_condition, template)

    def swapped(self, item: EncodedItem) -> EncodedItem:
        """The pairwise item with its two judged media in the other order (for position debiasing)."""
        judged = item.media[item.n_condition :][::-1]
        return self.tokenize(item.prompt, item.media[: item.n_condition] + judged, item.instruction, item.index,
                             item.n_condition, item.template)


def collate(items: list[EncodedItem], family: Family, pad_token_id: int, dtype, device,
            padding_side: str = "left") -> dict:
    """The padded keyword inputs of the transformers model for ``items``.

    Returns input_ids and attention_mask (int64 [B, T_max], padded on ``padding_side``), the family's pixel
    inputs (in ``dtype``) and its extra inputs, all on ``device``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    longest = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        cols = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(it.input_ids)
        mask[row, cols] = 1
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    inputs.update(family.collate_images([e for it in items for e in it.media], dtype, device))
    inputs.update(family.model_inputs(inputs["input_ids"]))
    return inputs


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token [B] (int64); right for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def extended(item: EncodedItem, extra: list[int]) -> EncodedItem:
    """``item`` with ``extra`` token ids appended (a decision, or generated reasons)."""
    item = copy.copy(item)
    item.input_ids = list(item.input_ids) + list(extra)
    return item
