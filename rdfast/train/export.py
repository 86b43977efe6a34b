"""Export a trained reward model: a directory ``RewardModel.from_pretrained`` (or ``RegressiveRewardModel``)
loads and scores exactly as trained.

LoRA: the adapter (``adapter_model.safetensors``) with ``base_model`` recorded in rdfast_config.json as the
user gave it (a hub id, ``tiny:NAME``, or a path relative to the directory: ``rdfast.loading.record_base_model``),
unless ``save_merged``; full fine-tuning (or merged LoRA): the whole model. Always: the tokenizer, the base
checkpoint's processor files, the regressive head if any, and ``rdfast_config.json`` (``RewardConfig``).
"""
from __future__ import annotations

import os
import shutil

from torch import nn

from ..loading import record_base_model
from ..reward_config import RewardConfig
from .config import TrainConfig
from .distributed import barrier, unshard_all
from .regressive import RegressiveHead

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja")


def reward_config(rm, config: TrainConfig, base_model: str | None = None) -> RewardConfig:
    """The RewardConfig of a model trained with ``config``: how it scores, and how it was trained.

    Args:
        rm: the trained RewardModel (answer tokens, video sampling).
        config: the run's TrainConfig.
        base_model: for a LoRA adapter directory, its base model as recorded (``record_base_model``); None
            otherwise.
    Returns:
        The RewardConfig written as ``rdfast_config.json``.
    """
    return RewardConfig(answer_words=(rm.answers.yes_word, rm.answers.no_word), yes_token_id=rm.yes_token_id,
                        no_token_id=rm.no_token_id, normalize=config.normalize, instruction=config.instruction,
                        num_frames=rm.num_frames, fps=rm.fps, base_model=base_model, paradigm=config.paradigm,
                        cot_format=config.cot_format, finetune=config.finetune,
                        template=rm.template.to_dict())


def save_model(directory: str | os.PathLike, rm, config: TrainConfig, base_path: str, *, peft_model=None,
               head: RegressiveHead | None = None, wrapped: nn.Module | None = None, rank: int = 0,
               base_model: str | os.PathLike | None = None) -> None:
    """Write the trained model to ``directory``. Collective: every rank calls.

    Afterwards a LoRA model is merged in memory (on every rank) exactly as loading merges it, so it scores
    as the saved directory does; under FSDP2 the weights stay unsharded (a merged model trains no further).

    Args:
        directory: the output folder (created if needed).
        rm: the trained RewardModel.
        config: the run's TrainConfig (``save_merged``, ``strategy`` and what rdfast_config.json records).
        base_path: the base checkpoint directory (processor files; ``base_model`` of an adapter).
        peft_model: the peft model holding the LoRA adapters, or None for full fine-tuning.
        head: the regressive head, if any.
        wrapped: the module as the run wrapped it (needed under FSDP2: its weights are all-gathered).
        rank: this process's rank (rank 0 writes).
        base_model: the base model as the user gave it (a hub id, ``tiny:NAME`` or a directory), recorded for a
            LoRA adapter; None: ``base_path``.
    """
    directory = os.fspath(directory)
    fsdp = config.strategy == "fsdp"
    if fsdp:  # the full weights on every rank (collective); they stay so
        unshard_all(wrapped)

    def parameters(module):  # FSDP2's state_dict hooks hand out shards: save the (unsharded) parameters
        return {n: p.detach() for n, p in module.named_parameters()} if fsdp else None

    if rank == 0:
        os.makedirs(directory, exist_ok=True)
    recorded_base, write_full = None, True
    if peft_model is not None:
        if not config.save_merged:
            if rank == 0:
                peft_model.save_pretrained(directory, safe_serialization=True, state_dict=parameters(peft_model))
            # relative paths stay valid when the directory is renamed into place from a sibling
            recorded_base, write_full = record_base_model(base_model or base_path, directory), False
        # from here on the in-memory model (every rank's) is the merged one
        peft_model.merge_and_unload()
    if rank == 0:
        if write_full:
            rm.model.save_pretrained(directory, safe_serialization=True, state_dict=parameters(rm.model))
        rm.tokenizer.save_pretrained(directory)
        for name in PROCESSOR_FILES:
            src = os.path.join(base_path, name)
            if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(directory, name)):
                shutil.copyfile(src, os.path.join(directory, name))
        if head is not None:
            head.save(directory)
        reward_config(rm, config, recorded_base).save(directory)
    barrier()
