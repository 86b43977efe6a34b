"""The regressive baseline: a scalar head on the VLM's last hidden state, trained with Bradley-Terry.

The reward of (image, prompt, instruction) is ``head(h)`` where ``h`` is the final hidden state at the last
prompt token of the pointwise prompt (the position a generative judge would answer "yes" at). A trained
directory holds the VLM (merged weights or a LoRA adapter, as for generative models), ``regressive_head.
safetensors`` and ``rdfast_config.json``; ``RegressiveRewardModel.from_pretrained(dir)`` loads all three.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import replace

import torch
from torch import nn

from ..errors import InputError
from ..loading import check_finite, check_missing
from ..model import RewardModel
from ..ops import finite_rewards
from ..resolve import resolve
from ..reward_config import RewardConfig
from ..testing import tiny_checkpoint

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
        """The head saved in ``directory``; InputError naming a missing, misshapen or non-finite tensor."""
        from safetensors.torch import load_file

        path = os.path.join(directory, HEAD_FILE)
        state = load_file(path)
        check_missing({"linear.weight", "linear.bias"} - set(state), path)
        weight, bias = state["linear.weight"], state["linear.bias"]
        if weight.dim() != 2 or weight.shape[0] != 1 or bias.shape != (1,):
            raise InputError(f"{path}: linear.weight {tuple(weight.shape)} and linear.bias {tuple(bias.shape)} are "
                             "not a [1, H] head")
        check_finite(state.items(), path)
        head = cls(weight.shape[1])
        head.load_state_dict(state)
        return head.to(device) if device is not None else head


def hidden_size(rm) -> int:
    return rm.model.get_output_embeddings().weight.shape[1]


class RegressiveRewardModel:
    """A RewardModel's backbone plus a scalar head: ``score`` returns rewards, not probabilities."""

    def __init__(self, rm, head: RegressiveHead):
        self.rm, self.head = rm, head

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, **kwargs) -> RegressiveRewardModel:
        """Load a directory written by ``rdfast.train`` for the regressive paradigm."""
        rm = RewardModel.from_pretrained(path, device=device, dtype=dtype, **kwargs)
        if not os.path.isfile(os.path.join(rm_path(path), HEAD_FILE)):
            raise FileNotFoundError(f"{path}: no {HEAD_FILE}; is this a regressive reward model directory?")
        head = RegressiveHead.load(rm_path(path), rm.device)
        head.requires_grad_(False)
        return cls(rm, head)

    def rewards(self, items: list, batch_size: int | None = None) -> torch.Tensor:
        """Scalar rewards [N] float32 for encoded pointwise items (``rm.encode``), through the scoring engine."""
        options = self.rm.options if batch_size is None else replace(self.rm.options, batch_size=batch_size)
        with self.rm.grad_context(items, self.head.parameters()):
            return finite_rewards(self.head(self.rm.last_hidden(items, options)))

    def score(self, images=None, prompts=None, instruction=None, batch_size=None) -> torch.Tensor:
        """Rewards [N] float32 for N (image, prompt) items (unbounded reals; higher is better)."""
        return self.rewards(self.rm.encode(prompts, [images], instruction), batch_size)

    def compare(self, images1=None, images2=None, prompts=None, instruction=None, batch_size=None) -> torch.Tensor:
        """P(image 2 better) = sigmoid(r2 - r1) under Bradley-Terry: [N] float32."""
        r1 = self.score(images1, prompts, instruction, batch_size)
        r2 = self.score(images2, prompts, instruction, batch_size)
        return torch.sigmoid(r2 - r1)


def rm_path(spec) -> str:
    """The local directory of a model spec (a path, tiny:NAME or a hub id)."""
    return resolve(spec, tiny_checkpoint, "reward model")


def read_rdfast_config(path) -> dict:
    config = RewardConfig.load(rm_path(path))
    return dataclasses.asdict(config) if config else {}
