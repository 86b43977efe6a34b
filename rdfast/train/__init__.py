"""Training and evaluating RewardDance reward models: data, losses, trainer, evaluation, explanations.

One job per module: ``config`` (TrainConfig), ``data`` (records, batches), ``losses``, ``module`` (the
module DDP/FSDP2 wrap), ``distributed`` (process groups), ``checkpoints``, ``export`` (the trained
directory), ``rundir`` (one run per output folder), ``trainer`` (the loop), ``evaluate``, ``cli``.

    from rdfast.train import Trainer, TrainConfig, load_preferences, evaluate
    train = load_preferences("train.jsonl")                    # bad lines reported with line numbers
    Trainer("ckpts/base", TrainConfig(paradigm="pairwise", max_steps=500), train, load_preferences("val.jsonl"),
            output_dir="out/rm").train(resume="auto")
    rm = rdfast.RewardModel.from_pretrained("out/rm")          # scores exactly as trained

Paradigms: "pairwise" (generative, with a reference: the paper's main RM), "pointwise" (generative, the
search verifier), "regressive" (scalar head, the baseline) and "cot" (pairwise with reasons).
"""
from .batches import COT_FORMATS, PARADIGMS, Batch, Collator
from .checkpoints import list_checkpoints
from .config import TrainConfig
from .data import (
    LABELS,
    TIE,
    DataError,
    PreferenceDataset,
    PreferenceRecord,
    load_preferences,
    parse_label,
    reject_special_tokens,
    save_preferences,
)
from .evaluate import (
    accuracy,
    accuracy_with_ties,
    evaluate,
    load_trained,
    pair_probabilities,
    predict_with_ties,
    tune_tie_threshold,
)
from .losses import (
    answer_ce,
    bradley_terry_loss,
    cot_loss,
    log_odds,
    pairwise_loss,
    pointwise_loss,
    sequence_logprobs,
)
from .regressive import RegressiveHead, RegressiveRewardModel
from .trainer import Trainer

__all__ = [
    "COT_FORMATS", "LABELS", "PARADIGMS", "TIE", "Batch", "Collator", "DataError", "PreferenceDataset",
    "PreferenceRecord", "RegressiveHead", "RegressiveRewardModel", "TrainConfig", "Trainer", "accuracy",
    "accuracy_with_ties", "answer_ce", "bradley_terry_loss", "cot_loss", "evaluate",
    "list_checkpoints", "load_preferences", "load_trained", "log_odds", "pair_probabilities", "pairwise_loss",
    "parse_label", "pointwise_loss", "predict_with_ties", "reject_special_tokens", "save_preferences", "sequence_logprobs",
    "tune_tie_threshold",
]
