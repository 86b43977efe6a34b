"""Flow-GRPO's reward-function convention for an rdfast reward model, in process or behind ``rdfast serve``.

Flow-GRPO (flow_grpo/rewards.py, checked at commit 54809b5) calls every reward as ``fn(images, prompts, metadata)``
and takes ``(scores, info)`` back; ``images`` is a float tensor [N, 3, H, W] in [0, 1] or a uint8 numpy array
[N, H, W, 3], and its own reward functions round float pixels to 8 bits before they score them. This adapter does
the same (``rdfast.wire.to_pil``), so a local model and a server score the same pixels and agree within 1e-5.

    from rdfast.integrations import flow_grpo
    fn = flow_grpo("http://127.0.0.1:8000")          # or flow_grpo(RewardModel.from_pretrained(...))
    scores, info = fn(images, prompts, metadata)     # scores: float32 numpy [N]; info: {} as Flow-GRPO's own
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..remote import RemoteRewardModel
from ..wire import image_list, to_pil


def flow_grpo(rm_or_url, instruction: str | None = None, api_key: str | None = None, timeout: float = 120.0):
    """A Flow-GRPO reward function scoring P(yes) pointwise.

    Args:
        rm_or_url: a ``RewardModel`` (scored in this process), a ``RemoteRewardModel``, or a server URL.
        instruction: the judging instruction (None: the model's own).
        api_key, timeout: for a URL, as ``RemoteRewardModel`` takes them.
    Returns:
        ``fn(images, prompts, metadata) -> (scores, info)``: images a float tensor [N, 3, H, W] in [0, 1], a uint8
        or float numpy array [N, H, W, 3], or a list of PIL images; prompts N strings (a list, tuple or numpy
        array); metadata ignored. scores is a float32 numpy array [N].
    """
    rm = RemoteRewardModel(rm_or_url, api_key=api_key, timeout=timeout) if isinstance(rm_or_url, str) else rm_or_url
    if not (hasattr(rm, "score") and callable(rm.score)):
        raise TypeError(f"rm_or_url: expected a RewardModel, a RemoteRewardModel or a URL, got {type(rm).__name__}")

    def fn(images, prompts, metadata=None):
        pixels = [to_pil(image, i, "images") for i, image in enumerate(image_list(images, "images"))]
        if isinstance(prompts, np.ndarray):  # Flow-GRPO's own clients split prompts with np.array_split
            prompts = prompts.reshape(-1).tolist()
        if isinstance(prompts, str) or len(prompts) != len(pixels):
            got = "one string" if isinstance(prompts, str) else len(prompts)
            raise InputError(f"expected {len(pixels)} prompts (one per image), got {got}", field="prompts")
        texts = [p.decode() if isinstance(p, bytes) else p for p in prompts]
        with torch.no_grad():
            scores = rm.score(images=pixels, prompts=texts, instruction=instruction)
        return scores.detach().float().cpu().numpy(), {}

    return fn
