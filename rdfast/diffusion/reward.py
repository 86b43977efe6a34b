"""The reward model as a generator's reward: pairwise against cached Best-of-N references, or pointwise; for
images [N, 3, H, W] and videos [N, T, 3, H, W] alike (the tensor's rank says which).

Every reward-model call made by rdfast.diffusion goes through ``PairwiseReward.__call__`` (ReFL),
``PairwiseReward.reference`` (Best-of-N ranking, once per prompt) or ``PointwiseReward.__call__`` (the search
verifier), so engine-side caches (shared prefixes, vision features) serve all of them.

    reward = PairwiseReward(rm, n=16, top_k=2)                 # the paper's best setting: Best-of-16, top 2
    reward.prepare(prompts, generate)                          # references from the base model, cached
    r = reward(images, prompts)                                # mean_k P(image better than reference k), [N]
    fn = reward_fn(reward)                                     # plain fn(images, prompts) -> Tensor for other RL loops

Videos go to the reward model as ``videos1`` / ``videos2`` (pairwise) or ``videos`` (pointwise), judged by the
text-to-video instruction ("t2v") unless another is given ("motion", or any text); ``num_frames`` limits the frames
it sees per video. Best-of-N references are ranked by ``RewardModel.rank`` (pairwise win counts over every ordered
pair); ``rank_pairwise`` calls it for images or videos alike (videos go as ``videos=``).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from PIL import Image
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from ..images import pil_to_tensor, to_rgb


@contextlib.contextmanager
def activation_checkpointing(rm):
    """Per-layer activation checkpointing in a frozen transformers reward model, for one backward.

    transformers checkpoints a layer only when the layer is in training mode; setting ``training`` on the
    checkpointing layers alone (not on their children) enables it while attention/dropout submodules stay in
    eval mode, so scores are unchanged. Restored on exit.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer  # heavy

    layers = [m for m in rm.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    saved = [(m.gradient_checkpointing, m.training, getattr(m, "_gradient_checkpointing_func", None)) for m in layers]
    func = functools.partial(checkpoint, use_reentrant=False)
    try:
        for m in layers:
            m.gradient_checkpointing, m.training, m._gradient_checkpointing_func = True, True, func
        yield len(layers)
    finally:
        for m, (gc, tr, fn) in zip(layers, saved):
            m.gradient_checkpointing, m.training = gc, tr
            if fn is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = fn


IMAGE, VIDEO = "image", "video"
#: what videos are judged by when no instruction is given: text-to-video alignment (RewardDance's T2V reward)
VIDEO_INSTRUCTION = "t2v"


def media_kind(media) -> str:
    """IMAGE for a float tensor [N, 3, H, W], VIDEO for [N, T, 3, H, W] (T >= 1); a clear error otherwise."""
    if torch.is_tensor(media) and media.dim() == 4 and media.shape[1] == 3:
        return IMAGE
    if torch.is_tensor(media) and media.dim() == 5 and media.shape[2] == 3:
        if media.shape[1] == 0:
            raise ValueError(f"videos: zero frames (shape {tuple(media.shape)})")
        return VIDEO
    shape = tuple(media.shape) if torch.is_tensor(media) else type(media).__name__
    raise ValueError(f"expected images, a float tensor [N, 3, H, W], or videos [N, T, 3, H, W], in [0, 1]; "
                     f"got {shape}")


def _check_media(media, prompts) -> tuple[torch.Tensor, list[str], str]:
    kind = media_kind(media)
    if isinstance(prompts, str) or len(prompts) != media.shape[0]:
        raise ValueError(f"prompts: expected a list of {media.shape[0]} strings (one per {kind}), got "
                         f"{prompts!r}" if isinstance(prompts, str) else f"{len(prompts)} prompts")
    return media, list(prompts), kind


def _media_args(kind: str, first, second=None, num_frames=None) -> dict:
    """The reward model's keyword arguments for one (pointwise) or two (pairwise) columns of images or videos."""
    if kind == IMAGE:
        return {"images": first} if second is None else {"images1": first, "images2": second}
    out = {"videos": first} if second is None else {"videos1": first, "videos2": second}
    return {**out, "num_frames": num_frames}


def _instruction(instruction, kind: str):
    return VIDEO_INSTRUCTION if instruction is None and kind == VIDEO else instruction


@torch.no_grad()
def rank_pairwise(rm, candidates: torch.Tensor, prompt: str, top_k: int = 1, instruction=None, num_frames=None,
                  batch_size=None):
    """Best-of-N by pairwise win counts: ``RewardModel.rank`` over one prompt's candidates.

    Every ordered pair is judged, both orders averaged, a hard win for P > 0.5, ties broken by summed win
    probabilities.

    Args:
        rm: a ``RewardModel``.
        candidates: images float [n, 3, H, W] or videos float [n, T, 3, H, W] in [0, 1], n >= 2.
        prompt: the prompt the candidates were generated for.
        top_k: how many of the best to return (default 1).
        instruction: the judging instruction; None: the reward model's default, "t2v" for videos.
        num_frames: videos: frames the reward model sees per video, evenly spread (None: all).
        batch_size: pairs per reward-model forward (None: the reward model's default).

    Returns:
        ``RankResult``: ``top`` (indices, best first) and ``wins`` (hard wins per candidate).
    """
    kind = media_kind(candidates)
    n = candidates.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 Best-of-N candidates for {prompt!r}, got {n}")
    items = list(candidates.unbind(0))  # one object per candidate: the engine preprocesses each once
    media = {"videos": items, "num_frames": num_frames} if kind == "video" else {"candidates": items}
    return rm.rank(**media, prompt=prompt, top_k=top_k, instruction=_instruction(instruction, kind),
                   batch_size=batch_size)


REFERENCES = ("top", "bottom")  #: which Best-of-N candidates PairwiseReward keeps


class PairwiseReward:
    """reward(images, prompts) = mean over the prompt's top-k references of P(image better than reference).

    References: per prompt, ``n`` candidates from the base generator ranked Best-of-N by pairwise wins
    (``rm.rank``; ``rank_pairwise`` for videos); the ``top_k`` best are cached (CPU float tensors [3, H, W], or
    [T, 3, H, W] for videos) and reused for every later call; ``reference="bottom"`` keeps the worst ``top_k``
    instead (the paper's reference ablation). ``checkpoint=True``: the reward model's layers are
    recomputed in backward instead of stored. The reward model may live on another device than the images;
    rewards come back on the images' device. Videos: ``instruction`` None means "t2v"; ``num_frames`` caps the
    frames the reward model sees per video (evenly spread; None: all).
    """

    def __init__(self, rm, n: int = 16, top_k: int = 2, instruction=None, debias: bool = False,
                 checkpoint: bool = True, num_frames: int | None = None, reference: str = "top"):
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if n < 2:
            raise ValueError(f"n (Best-of-N candidates) must be >= 2, got {n}")
        if not 1 <= top_k <= n:
            raise ValueError(f"top_k must be in [1, n={n}], got {top_k}")
        self.rm = rm
        self.n, self.top_k = int(n), int(top_k)
        self.instruction = instruction
        self.debias = debias
        self.checkpoint = checkpoint
        self.num_frames = num_frames
        self.which = reference
        self.references: dict[str, torch.Tensor] = {}  # prompt -> [top_k, 3, H, W] or [top_k, T, 3, H, W], best first
        self.reference_wins: dict[str, list[int]] = {}

    def has_reference(self, prompt: str) -> bool:
        return prompt in self.references

    @torch.no_grad()
    def reference(self, prompt: str, candidates: torch.Tensor) -> torch.Tensor:
        """Rank ``candidates`` [n, 3, H, W] (or videos [n, T, 3, H, W]) by pairwise wins, cache and return the
        top_k [top_k, ...] best (``reference="bottom"``: worst), best first."""
        kind = media_kind(candidates)
        if candidates.shape[0] < 2:
            raise ValueError(f"need at least 2 Best-of-N candidates for {prompt!r}, got {candidates.shape[0]}")
        k = min(self.top_k, candidates.shape[0])
        ranked_k = k if self.which == "top" else candidates.shape[0]  # the worst need the whole order
        if kind == IMAGE:
            ranked = self.rm.rank(candidates=list(candidates.float().cpu()), prompt=prompt, top_k=ranked_k,
                                  instruction=self.instruction)
        else:
            ranked = rank_pairwise(self.rm, candidates.float().to(self.rm.device), prompt, ranked_k,
                                   self.instruction, self.num_frames)
        top_idx = ranked.top if self.which == "top" else ranked.order[-k:]
        top = candidates[top_idx].float().cpu()
        self.references[prompt] = top
        self.reference_wins[prompt] = [int(ranked.wins[j]) for j in top_idx]
        return top

    def prepare(self, prompts, generate, progress: bool = True):
        """Build the references of every prompt not cached yet; ``generate(prompt, n)`` -> images [n, 3, H, W]
        (or videos [n, T, 3, H, W])."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self.references]
        for p in tqdm(todo, desc="Best-of-N references", unit="prompt", disable=not progress or not todo):
            self.reference(p, generate(p, self.n))

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """images float [N, 3, H, W] or videos [N, T, 3, H, W] in [0, 1] (may require grad) -> float32 [N] on
        their device."""
        images, prompts, kind = _check_media(images, prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.references]
        if missing:
            raise KeyError(f"no Best-of-N reference for prompt {missing[0]!r}; call prepare(prompts, generate) first")
        for p in dict.fromkeys(prompts):
            if self.references[p].dim() != images.dim():
                raise ValueError(f"the references of prompt {p!r} are {media_kind(self.references[p])}s, the "
                                 f"candidates {kind}s: a reward serves one kind")
        k = self.top_k
        device = self.rm.device
        cands = images.to(device=device, dtype=torch.float32)
        refs = [self.references[p][j].to(device) for p in prompts for j in range(min(k, len(self.references[p])))]
        counts = [min(k, len(self.references[p])) for p in prompts]
        rows = torch.repeat_interleave(torch.arange(len(prompts), device=device), torch.tensor(counts, device=device))
        ckpt = self.checkpoint and images.requires_grad
        ctx = activation_checkpointing(self.rm) if ckpt else contextlib.nullcontext()
        with ctx:
            second = list(cands.index_select(0, rows).unbind(0))
            p = self.rm.compare(**_media_args(kind, refs, second, self.num_frames),
                                prompts=[prompts[int(r)] for r in rows],
                                instruction=_instruction(self.instruction, kind), debias=self.debias)
        # average each image's rewards over its references
        out = torch.zeros(len(prompts), device=p.device, dtype=p.dtype).index_add(0, rows.to(p.device), p)
        out = out / torch.tensor(counts, device=p.device, dtype=p.dtype)
        return out.to(images.device)


class PointwiseReward:
    """reward(images, prompts) = P(yes | image or video, prompt): the search verifier (no reference needed).

    Videos: ``instruction`` None means "t2v" (pass "motion" for motion quality); ``num_frames`` caps the frames
    the reward model sees per video."""

    def __init__(self, rm, instruction=None, checkpoint: bool = True, num_frames: int | None = None):
        self.rm = rm
        self.instruction = instruction
        self.checkpoint = checkpoint
        self.num_frames = num_frames

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """images float [N, 3, H, W] or videos [N, T, 3, H, W] in [0, 1] -> float32 [N] on their device."""
        images, prompts, kind = _check_media(images, prompts)
        ctx = (activation_checkpointing(self.rm) if self.checkpoint and images.requires_grad
               else contextlib.nullcontext())
        with ctx:
            media = list(images.to(self.rm.device, torch.float32).unbind(0))
            r = self.rm.score(**_media_args(kind, media, num_frames=self.num_frames), prompts=prompts,
                              instruction=_instruction(self.instruction, kind))
        return r.to(images.device)


def reward_fn(reward):
    """A plain ``fn(images, prompts) -> Tensor[N]`` for RL loops written for other reward models.

    ``reward``: a PairwiseReward / PointwiseReward, or a RewardModel (wrapped pointwise). images may be float
    tensors [N, 3, H, W] in [0, 1] or, as many loops pass them, in [-1, 1] (detected by negative values) or
    uint8 [N, H, W, 3] / [N, 3, H, W], as tensors, numpy arrays or lists of either, or a list of PIL images;
    videos the same with a frame axis after N ([N, T, 3, H, W] or [N, T, H, W, 3]); prompts a list of N strings
    (or one string for all).
    """
    if hasattr(reward, "score") and hasattr(reward, "compare"):
        reward = PointwiseReward(reward)

    def fn(images, prompts):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        elif isinstance(images, (list, tuple)):
            images = torch.stack([pil_to_tensor(to_rgb(i, k)) if isinstance(i, Image.Image) else torch.as_tensor(i)
                                  for k, i in enumerate(images)])
        if not torch.is_tensor(images) or images.dim() not in (4, 5):
            raise ValueError("images: expected a batch [N, 3, H, W] or [N, H, W, 3] (videos: [N, T, 3, H, W] or "
                             "[N, T, H, W, 3])")
        c = images.dim() - 3  # the channel axis of the channels-first layout
        if images.shape[c] != 3 and images.shape[-1] == 3:
            images = images.movedim(-1, c)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif images.detach().min() < 0:
            images = (images + 1) / 2
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        return reward(images, list(prompts))

    return fn
