"""RewardTrainModule: the module DDP / FSDP2 wrap; one forward is the summed loss of one micro-batch.

The paradigms read at each row's last token (pairwise, pointwise, regressive) run through the scoring engine
or one padded forward, as ``TrainConfig.batching`` resolves (``resolve_batching``); cot always runs padded.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..encoding import last_positions
from .batches import Batch
from .config import TrainConfig
from .losses import (
    IGNORE,
    bradley_terry_loss,
    cot_loss,
    pairwise_loss,
    pointwise_loss,
    sequence_logprobs,
)
from .regressive import RegressiveHead


def resolve_batching(config: TrainConfig, device: torch.device) -> str:
    """How the rows of ``config.paradigm`` run on ``device``: "length", "varlen" or "padded".

    Args:
        config: the run's TrainConfig ("auto" resolves to "length" on CUDA, "padded" elsewhere).
        device: the device the model trains on.
    Returns:
        "padded" for cot and under FSDP2 (every rank must run the same forwards, since FSDP2 all-gathers each
        layer at each of its forwards and the engine's groups depend on the data; and a shared prefix's KV
        would bypass FSDP2's backward hooks); otherwise the configured (or auto) batching.
    """
    if config.paradigm == "cot" or config.strategy == "fsdp":
        return "padded"
    if config.batching == "auto":
        return "length" if device.type == "cuda" else "padded"
    return config.batching


class RewardTrainModule(nn.Module):
    """Holds the VLM (and the regressive head); ``forward(batch)`` returns (summed loss, stats [3]).

    stats = (summed loss detached, correct decisions, decisions counted) float32 [3], for accuracy logging.

    Args:
        rm: the RewardModel being trained (its ``model`` is registered, so DDP/FSDP see every parameter).
        config: the run's TrainConfig (paradigm, ties, loss weights, batching, bf16).
        head: the regressive head (paradigm "regressive" only).
    """

    def __init__(self, rm, config: TrainConfig, head: RegressiveHead | None = None):
        super().__init__()
        self.model = rm.model  # registered, so DDP/FSDP see every parameter
        self.head = head
        self.rm, self.config = rm, config
        self.register_buffer("answer_ids", torch.tensor([rm.yes_token_id, rm.no_token_id]), persistent=False)
        self.batching = resolve_batching(config, rm.device)
        self.through_engine = self.batching != "padded"

    def _autocast(self):
        return torch.autocast(self.rm.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss of ``batch`` (a scalar with a graph) and its stats [3] (detached)."""
        config, rm = self.config, self.rm
        target = batch.target.to(rm.device)
        if self.through_engine:
            options = replace(rm.options, batching=self.batching)  # read per call: rm.options may change
            with self._autocast():
                h = rm.last_hidden(batch.items, options)
            return self._last_token_loss(h, target)
        with self._autocast():
            hidden = rm.hidden_states(batch.inputs)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if config.paradigm != "cot":
            return self._last_token_loss(hidden[rows, last_positions(batch.inputs["attention_mask"])], target)
        decision_pos = batch.decision_pos.to(hidden.device)
        logp = rm.head_logprobs(hidden[rows, decision_pos - 1], self.answer_ids)[0]
        labels = batch.labels.to(hidden.device).clone()
        labels[rows, decision_pos] = IGNORE  # the decision is trained through logp (soft for ties)
        loss = cot_loss(logp, target, sequence_logprobs(rm, hidden, labels), config.decision_weight, config.ties,
                        "sum")
        return loss, self._stats(loss, logp[:, 0] - logp[:, 1], target)

    def _last_token_loss(self, h, target):
        """Loss of the paradigms read at each row's last token, from those hidden states h [rows, H]."""
        config, rm = self.config, self.rm
        if config.paradigm == "regressive":
            r = self.head(h)
            loss = bradley_terry_loss(r[0::2], r[1::2], target, config.ties, "sum")
            return loss, self._stats(loss, r[1::2] - r[0::2], target)
        logp = rm.head_logprobs(h, self.answer_ids)[0]
        if config.paradigm == "pairwise":
            loss = pairwise_loss(logp, target, config.ties, "sum")
            return loss, self._stats(loss, logp[:, 0] - logp[:, 1], target)
        loss = pointwise_loss(logp[0::2], logp[1::2], target, config.ce_weight, config.ties, "sum")
        return loss, self._stats(loss, (logp[1::2, 0] - logp[1::2, 1]) - (logp[0::2, 0] - logp[0::2, 1]), target)

    @staticmethod
    def _stats(loss, margin, target):
        decided = target != 0.5
        correct = ((margin.detach() > 0) == (target > 0.5)) & decided
        return torch.stack([loss.detach().float(), correct.sum().float(), decided.sum().float()])
