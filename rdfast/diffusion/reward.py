"""The reward model as a generator's reward: pairwise against cached Best-of-N references, or pointwise.

Every reward-model call made by rdfast.diffusion goes through ``PairwiseReward.__call__`` (ReFL),
``PairwiseReward.reference`` (Best-of-N ranking, once per prompt) or ``PointwiseReward.__call__`` (the search
verifier), so engine-side caches (shared prefixes, vision features) serve all of them.

    reward = PairwiseReward(rm, n=16, top_k=2)                 # the paper's best setting: Best-of-16, top 2
    reward.prepare(prompts, generate)                          # references from the base model, cached
    r = reward(images, prompts)                                # mean_k P(image better than reference k), [N]
    fn = reward_fn(reward)                                     # plain fn(images, prompts) -> Tensor for other RL loops
"""
from __future__ import annotations

import contextlib
import functools

import torch


@contextlib.contextmanager
def activation_checkpointing(rm):
    """Per-layer activation checkpointing in a frozen transformers reward model, for one backward.

    transformers checkpoints a layer only when the layer is in training mode; setting ``training`` on the
    checkpointing layers alone (not on their children) enables it while attention/dropout submodules stay in
    eval mode, so scores are unchanged. Restored on exit.
    """
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

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


def _check_images(images, prompts) -> tuple[torch.Tensor, list[str]]:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images: expected a float tensor [N, 3, H, W] in [0, 1], got {shape}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise ValueError(f"prompts: expected a list of {images.shape[0]} strings (one per image), got "
                         f"{prompts!r}" if isinstance(prompts, str) else f"{len(prompts)} prompts")
    return images, list(prompts)


class PairwiseReward:
    """reward(images, prompts) = mean over the prompt's top-k references of P(image better than reference).

    References: per prompt, ``n`` candidates from the base generator ranked Best-of-N by pairwise wins
    (``rm.rank``); the ``top_k`` best are cached (CPU float tensors [3, H, W]) and reused for every later call.
    ``checkpoint=True``: the reward model's layers are recomputed in backward instead of stored. The reward
    model may live on another device than the images; rewards come back on the images' device.
    """

    def __init__(self, rm, n: int = 16, top_k: int = 2, instruction=None, debias: bool = False,
                 checkpoint: bool = True):
        if n < 2:
            raise ValueError(f"n (Best-of-N candidates) must be >= 2, got {n}")
        if not 1 <= top_k <= n:
            raise ValueError(f"top_k must be in [1, n={n}], got {top_k}")
        self.rm = rm
        self.n, self.top_k = int(n), int(top_k)
        self.instruction = instruction
        self.debias = debias
        self.checkpoint = checkpoint
        self.references: dict[str, torch.Tensor] = {}  # prompt -> [top_k, 3, H, W], best first
        self.reference_wins: dict[str, list[int]] = {}

    def has_reference(self, prompt: str) -> bool:
        return prompt in self.references

    @torch.no_grad()
    def reference(self, prompt: str, candidates: torch.Tensor) -> torch.Tensor:
        """Rank ``candidates`` [n, 3, H, W] by pairwise wins, cache and return the top_k [top_k, 3, H, W]."""
        if candidates.shape[0] < 2:
            raise ValueError(f"need at least 2 Best-of-N candidates for {prompt!r}, got {candidates.shape[0]}")
        ranked = self.rm.rank(candidates=list(candidates.float().cpu()), prompt=prompt,
                              top_k=min(self.top_k, candidates.shape[0]), instruction=self.instruction)
        top = candidates[ranked.top].float().cpu()
        self.references[prompt] = top
        self.reference_wins[prompt] = [int(ranked.wins[k]) for k in ranked.top]
        return top

    def prepare(self, prompts, generate, progress: bool = True):
        """Build the references of every prompt not cached yet; ``generate(prompt, n)`` -> images [n, 3, H, W]."""
        from tqdm import tqdm

        todo = [p for p in dict.fromkeys(prompts) if p not in self.references]
        for p in tqdm(todo, desc="Best-of-N references", unit="prompt", disable=not progress or not todo):
            self.reference(p, generate(p, self.n))

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """images float [N, 3, H, W] in [0, 1] (may require grad) -> float32 [N] on the images' device."""
        images, prompts = _check_images(images, prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.references]
        if missing:
            raise KeyError(f"no Best-of-N reference for prompt {missing[0]!r}; call prepare(prompts, generate) first")
        k = self.top_k
        device = self.rm.device
        cands = images.to(device=device, dtype=torch.float32)
        refs = [self.references[p][j].to(device) for p in prompts for j in range(min(k, len(self.references[p])))]
        counts = [min(k, len(self.references[p])) for p in prompts]
        rows = torch.repeat_interleave(torch.arange(len(prompts), device=device), torch.tensor(counts, device=device))
        ckpt = self.checkpoint and images.requires_grad
        ctx = activation_checkpointing(self.rm) if ckpt else contextlib.nullcontext()
        with ctx:
            p = self.rm.compare(images1=refs, images2=list(cands.index_select(0, rows).unbind(0)),
                                prompts=[prompts[int(r)] for r in rows], instruction=self.instruction,
                                debias=self.debias)
        # average each image's rewards over its references
        out = torch.zeros(len(prompts), device=p.device, dtype=p.dtype).index_add(0, rows.to(p.device), p)
        out = out / torch.tensor(counts, device=p.device, dtype=p.dtype)
        return out.to(images.device)


class PointwiseReward:
    """reward(images, prompts) = P(yes | image, prompt): the search verifier (no reference needed)."""

    def __init__(self, rm, instruction=None, checkpoint: bool = True):
        self.rm = rm
        self.instruction = instruction
        self.checkpoint = checkpoint

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """images float [N, 3, H, W] in [0, 1] -> float32 [N] on the images' device."""
        images, prompts = _check_images(images, prompts)
        ctx = (activation_checkpointing(self.rm) if self.checkpoint and images.requires_grad
               else contextlib.nullcontext())
        with ctx:
            r = self.rm.score(images=list(images.to(self.rm.device, torch.float32).unbind(0)), prompts=prompts,
                              instruction=self.instruction)
        return r.to(images.device)


def reward_fn(reward):
    """A plain ``fn(images, prompts) -> Tensor[N]`` for RL loops written for other reward models.

    ``reward``: a PairwiseReward / PointwiseReward, or a RewardModel (wrapped pointwise). images may be float
    tensors [N, 3, H, W] in [0, 1] or, as many loops pass them, in [-1, 1] (detected by negative values) or
    uint8 [N, H, W, 3] / [N, 3, H, W]; prompts a list of N strings (or one string for all).
    """
    if hasattr(reward, "score") and hasattr(reward, "compare"):
        reward = PointwiseReward(reward)

    def fn(images, prompts):
        if isinstance(images, (list, tuple)):
            images = torch.stack([torch.as_tensor(i) for i in images])
        if not torch.is_tensor(images) or images.dim() != 4:
            raise ValueError("images: expected a batch [N, 3, H, W] or [N, H, W, 3]")
        if images.shape[1] != 3 and images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif images.detach().min() < 0:
            images = (images + 1) / 2
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        return reward(images, list(prompts))

    return fn
