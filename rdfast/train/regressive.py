"""The regressive baseline: a scalar head on the VLM's last hidden state, trained with Bradley-Terry.

The reward of (image, prompt, instruction) is ``head(h)`` where ``h`` is the final hidden state at the last
prompt token of the pointwise prompt (the position a generative judge would answer "yes" at). A trained
directory holds the VLM (merged weights or a LoRA adapter, as for generative models), ``regressive_head.
safetensors`` and ``rdfast_config.json``; ``RegressiveRewardModel.from_pretrained(dir)`` loads all three.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
from torch import nn

from ..reward_config import RewardConfig

HEAD_FILE = "regressive_head.safetensors"


class RegressiveHead(nn.Module):
    """Linear [H] -> scalar reward, float32 (a bf16 backbone's hidden states are upcast first)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.linear.weight)  # every image starts at reward 0: BT then sees d = 0 everywhere
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> rewards [N] float32."""
        return self.linear(hidden.float())[:, 0]

    def save(self, directory) -> None:
        from safetensors.torch import save_file

        # parameters, not state_dict(): FSDP2's state_dict hooks would hand out shards; clone: unsharded they are
        # views into one all-gather buffer, which safetensors refuses
        save_file({k: v.detach().cpu().clone() for k, v in self.named_parameters()},
                  os.path.join(directory, HEAD_FILE))

    @classmethod
    def load(cls, directory, device=None) -> "RegressiveHead":
        from safetensors.torch import load_file

        state = load_file(os.path.join(directory, HEAD_FILE))
        head = cls(state["linear.weight"].shape[1])
        head.load_state_dict(state)
        return head.to(device) if device is not None else head


def hidden_size(rm) -> int:
    return rm.model.get_output_embeddings().weight.shape[1]


class RegressiveRewardModel:
    """A RewardModel's backbone plus a scalar head: ``score`` returns rewards, not probabilities."""

    def __init__(self, rm, head: RegressiveHead):
        self.rm, self.head = rm, head

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, **kwargs) -> "RegressiveRewardModel":
        """Load a directory written by ``rdfast.train`` for the regressive paradigm."""
        from ..model import RewardModel

        rm = RewardModel.from_pretrained(path, device=device, dtype=dtype, **kwargs)
        if not os.path.isfile(os.path.join(path, HEAD_FILE)):
            raise FileNotFoundError(f"{path}: no {HEAD_FILE}; is this a regressive reward model directory?")
        head = RegressiveHead.load(path, rm.device)
        head.requires_grad_(False)
        return cls(rm, head)

    def rewards(self, inputs: dict) -> torch.Tensor:
        """Scalar rewards [B] float32 for collated pointwise inputs (``rm.collate``)."""
        hidden = self.rm.hidden_states(inputs)
        last = self.rm.last_positions(inputs["attention_mask"])
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

    def score(self, images=None, prompts=None, instruction=None, batch_size=None) -> torch.Tensor:
        """Rewards [N] float32 for N (image, prompt) items (unbounded reals; higher is better)."""
        items = self.rm.encode(prompts, [images], instruction)
        return run_batched(self.rm, items, self.rewards, batch_size, self.head.parameters())

    def compare(self, images1=None, images2=None, prompts=None, instruction=None, batch_size=None) -> torch.Tensor:
        """P(image 2 better) = sigmoid(r2 - r1) under Bradley-Terry: [N] float32."""
        r1 = self.score(images1, prompts, instruction, batch_size)
        r2 = self.score(images2, prompts, instruction, batch_size)
        return torch.sigmoid(r2 - r1)


def run_batched(rm, items, fn, batch_size=None, extra_params=()):
    """fn(collated inputs) over items in length-sorted micro-batches, order restored; [N, ...] stacked.

    Runs under inference_mode unless something needs a gradient (as ``RewardModel._run`` does).
    """
    batch_size = batch_size or default_batch_size(rm)
    needs_grad = torch.is_grad_enabled() and (
        any(e.pixels.requires_grad for it in items for e in it.images)
        or any(p.requires_grad for p in rm.model.parameters())
        or any(p.requires_grad for p in extra_params)
    )
    order = sorted(range(len(items)), key=lambda k: len(items[k].input_ids))
    out = [None] * len(items)
    with contextlib.nullcontext() if needs_grad else torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            values = fn(rm.collate([items[k] for k in chunk], rm.padding_side))
            for row, k in enumerate(chunk):
                out[k] = values[row]
    return torch.stack(out)


def default_batch_size(rm) -> int:
    options = getattr(rm, "options", None)
    return getattr(options, "batch_size", None) or getattr(rm, "batch_size", 8)


def read_rdfast_config(path) -> dict:
    config = RewardConfig.load(path)
    return dataclasses.asdict(config) if config else {}
