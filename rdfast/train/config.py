"""TrainConfig: everything a training run depends on, in one dataclass (saved with every checkpoint).

Each field carries its help text (and, for the CLI, any extra flag names) in its metadata, so ``rdfast train``
builds one flag per field from this table (``rdfast.train.cli``): a new knob is declared once, here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..reward_config import NORMALIZATIONS
from .batches import COT_FORMATS, PARADIGMS
from .losses import TIES

#: the language model's projections LoRA adapts by default (the vision tower has modules with the same names)
#: attention and MLP projections; Qwen3.5's linear-attention layers name theirs in_proj_qkv, in_proj_z, out_proj
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "in_proj_qkv",
                        "in_proj_z", "out_proj")
FINETUNES = ("lora", "full")
LR_SCHEDULES = ("constant", "linear", "cosine")
#: "padded": one padded forward; "length": the scoring engine with equal-length batches; "varlen": the engine
#: with variable-length packing; "auto": "length" on CUDA, "padded" on CPU
BATCHINGS = ("auto", "length", "varlen", "padded")
STRATEGIES = ("ddp", "fsdp")


def knob(default, help: str, *, choices: tuple | None = None, flags: tuple = (), off_flag: str | None = None):
    """A TrainConfig field with its CLI help.

    Args:
        default: the field's default value.
        help: one line for ``rdfast train --help``.
        choices: the accepted values, when the field is an enumeration.
        flags: extra flag names kept for compatibility (``--lr`` next to ``--learning-rate``).
        off_flag: a boolean's extra flag that sets it False (``--one-order`` for ``both_orders``).
    Returns:
        A ``dataclasses.field`` holding the default and this metadata.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flags": flags,
                                                        "off_flag": off_flag})


@dataclass
class TrainConfig:
    """Everything a run depends on (saved with every checkpoint); see each field's help."""

    paradigm: str = knob("pairwise", "pairwise | pointwise | regressive | cot", choices=PARADIGMS)
    finetune: str = knob("lora", "lora (peft, language-model projections) or full (every weight)",
                         choices=FINETUNES)
    lora_r: int = knob(16, "LoRA rank")
    lora_alpha: int = knob(32, "LoRA alpha")
    lora_dropout: float = knob(0.0, "LoRA dropout")
    lora_targets: tuple[str, ...] = knob(LANGUAGE_PROJECTIONS, "module names LoRA adapts inside the language "
                                         "model (comma list)")
    learning_rate: float = knob(1e-4, "peak learning rate", flags=("--lr",))
    head_learning_rate: float | None = knob(None, "regressive head's learning rate (default: learning_rate)")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    adam_betas: tuple[float, float] = knob((0.9, 0.999), "AdamW betas (comma list)")
    adam_eps: float = knob(1e-8, "AdamW epsilon")
    lr_schedule: str = knob("constant", "after the warm-up (transformers' get_scheduler)", choices=LR_SCHEDULES)
    warmup_steps: int = knob(0, "linear warm-up steps: step s < warmup_steps runs at s / warmup_steps")
    max_grad_norm: float | None = knob(1.0, "gradient clipping norm (none: no clipping)")
    batch_size: int = knob(8, "preference records per optimizer step, all ranks and micro-batches together")
    micro_batch_size: int | None = knob(None, "records per forward on one rank (default: batch_size / world)")
    max_steps: int = knob(100, "optimizer steps", flags=("--steps",))
    ties: str = knob("soft", "soft (target 0.5) or skip (left out of training)", choices=TIES)
    both_orders: bool = knob(True, "pairwise: also train each pair with its images swapped",
                             off_flag="--one-order")
    ce_weight: float = knob(0.1, "pointwise: weight of the yes/no cross-entropy next to Bradley-Terry")
    cot_format: str = knob("decision_first", "cot: where the decision sits", choices=COT_FORMATS)
    decision_weight: float = knob(1.0, "cot: weight of the decision token among the reason tokens")
    instruction: str | None = knob(None, "for records without one: overall, alignment, quality or any text "
                                   "(saved as the model's default)")
    normalize: str = knob("vocab", "how the trained model's P(yes) is normalised when it scores",
                          choices=NORMALIZATIONS)
    num_frames: int | None = knob(None, "video records: frames sampled per clip (saved as the model's default)")
    fps: float | None = knob(None, "video records: sample frames at this rate instead (not with num_frames)")
    batching: str = knob("auto", "padded: one padded forward (cot and FSDP2 always); length: the scoring "
                         "engine, equal-length batches; varlen: the engine, variable-length packing; auto: "
                         "length on CUDA, padded on CPU", choices=BATCHINGS)
    bf16: bool = knob(False, "bf16 autocast for the backbone (weights and optimizer stay float32)")
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward")
    strategy: str = knob("ddp", "under torchrun: ddp (replicas) or fsdp (FSDP2 fully_shard, each decoder "
                         "layer sharded)", choices=STRATEGIES)
    eval_every: int = knob(0, "steps between evaluations on the held-out records (0: only at the end)")
    eval_debias: bool = knob(False, "pairwise evaluation: average both image orders")
    save_every: int = knob(0, "steps between checkpoints (0: none during training)")
    keep_checkpoints: int = knob(2, "checkpoints kept (the newest)")
    save_merged: bool = knob(False, "LoRA: write merged full weights instead of the adapter")
    seed: int = knob(0, "seed of the data order and of the LoRA / head initialisation")
    strict: bool = knob(False, "stop on the first record the model rejects instead of skipping it")
    progress: bool = knob(True, "progress bar on rank 0")

    def __post_init__(self):
        for name, allowed in (("paradigm", PARADIGMS), ("finetune", FINETUNES), ("ties", TIES),
                              ("strategy", STRATEGIES), ("lr_schedule", LR_SCHEDULES), ("batching", BATCHINGS),
                              ("cot_format", COT_FORMATS), ("normalize", NORMALIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("pass num_frames or fps, not both")
        self.lora_targets, self.adam_betas = tuple(self.lora_targets), tuple(self.adam_betas)

    def to_dict(self) -> dict:
        """The config as plain JSON-ready data (tuples become lists when dumped)."""
        return dataclasses.asdict(self)
