"""A verl-omni visual reward scorer backed by ``rdfast serve``.

verl-omni (verl_omni/reward_loop/reward_manager/visual.py and .agents/rules/reward.md, checked at commit a1139ba,
August 2026) calls a scorer by keyword as ``compute_score(data_source=, solution_image=, ground_truth=,
extra_info=, **kwargs)``, awaits it when it is a coroutine function, and reads ``result["score"]``; the other keys
of the dict become metrics. ``solution_image`` is one generated image, a uint8 tensor [C, H, W] (videos arrive
as [T, C, H, W]); ``ground_truth`` holds the prompt; every extra key of the reward's config entry arrives as a
keyword argument, which is how ``server_url`` gets here:

    reward.reward_functions.rdfast.path=pkg://rdfast.integrations.verl_omni
    reward.reward_functions.rdfast.name=compute_score
    reward.reward_functions.rdfast.server_url=http://127.0.0.1:8000

Each call is one request for one image; the server batches concurrent calls into one model call. The client
(retries, errors) is ``RemoteRewardModel``, one per server, kept for the process.
"""
from __future__ import annotations

import asyncio
import functools
import os

import torch

from ..remote import RemoteRewardModel

#: where the server is when the config passes no ``server_url``
URL_VARIABLE = "RDFAST_SERVER_URL"


@functools.lru_cache(maxsize=None)
def _client(url: str, api_key: str | None, timeout: float) -> RemoteRewardModel:
    return RemoteRewardModel(url, api_key=api_key, timeout=timeout)


async def compute_score(data_source, solution_image, ground_truth, extra_info=None, *, server_url=None, api_key=None,
                        instruction=None, timeout=120.0, **kwargs) -> dict:
    """P(yes | image, prompt) from an ``rdfast serve`` server, in verl-omni's scorer shape.

    Args:
        data_source: the dataset's name (unused: one reward model serves every source).
        solution_image: the generated image: a uint8 (or float in [0, 1]) tensor [C, H, W] or [H, W, C], a numpy
            array or a PIL image.
        ground_truth: the prompt the image was generated for.
        extra_info: verl-omni's per-item metadata (unused).
        server_url: the server (default: the ``RDFAST_SERVER_URL`` environment variable).
        api_key, instruction, timeout: as ``RemoteRewardModel`` / ``score`` take them.
        kwargs: the manager's own keywords (``reward_router_address``, ``model_name``, ...), ignored.
    Returns:
        ``{"score": float}``.
    """
    url = server_url or os.environ.get(URL_VARIABLE)
    if not url:
        raise ValueError(f"no rdfast server: set server_url in the reward's config or {URL_VARIABLE}")
    if torch.is_tensor(solution_image) and solution_image.dim() == 4:
        raise ValueError(f"solution_image: a video {tuple(solution_image.shape)}; rdfast serve scores images")
    if not isinstance(ground_truth, str):
        raise ValueError(f"ground_truth: expected the prompt as a string, got {type(ground_truth).__name__}")
    client = _client(url, api_key, float(timeout))
    scores = await asyncio.to_thread(client.score, images=[solution_image], prompts=[ground_truth],
                                     instruction=instruction)
    return {"score": float(scores[0])}
