"""Pairwise accuracy of a reward model on preference data: without ties, with ties, by instruction.

Every paradigm is reduced to one number per pair, p = P(image 2 is better):

- pairwise / cot (decision first): the judge's P(yes) for "is image 2 better than image 1?" (``debias``
  averages with the swapped order), read exactly as ``RewardModel.compare`` reads it;
- cot (reasons first): the decision read after the greedily generated reasons (``explain``);
- pointwise: sigmoid(s2 - s1) with s = logit_yes - logit_no of each image judged alone (Bradley-Terry);
- regressive: sigmoid(r2 - r1) of the scalar head's rewards.

Accuracy without ties counts non-tie pairs, correct when (p > 0.5) == (label == 2). With ties, a pair is
predicted a tie when |p - 0.5| <= threshold; the threshold is tuned on a validation split and reported on
the test split (three-way accuracy over all pairs).
"""
from __future__ import annotations

import sys
from collections import defaultdict

import torch

from ..errors import InputError
from ..model import RewardModel
from .data import TIE, media_group, media_kwargs, reject_special_tokens
from .regressive import RegressiveRewardModel, read_rdfast_config


def load_trained(path, device=None, dtype=None, **kwargs):
    """(model, paradigm) for a directory written by ``rdfast.train`` (or any checkpoint: "pairwise").

    model is a ``RewardModel``, or a ``RegressiveRewardModel`` for the regressive paradigm.
    """
    config = read_rdfast_config(path)
    paradigm = config.get("paradigm", "pairwise")
    if paradigm == "regressive":
        return RegressiveRewardModel.from_pretrained(path, device=device, dtype=dtype, **kwargs), paradigm
    return RewardModel.from_pretrained(path, device=device, dtype=dtype, **kwargs), paradigm


def _encode_each(rm, records, default_instruction, log):
    """Encode each record's two candidates alone (pointwise); returns (kept indices, [firsts, seconds])."""
    kept, columns = [], [[], []]
    for i, rec in enumerate(records):
        try:
            encoded = [rec.encode(rm, [media], default_instruction) for media in rec.candidates]
        except InputError as err:
            if log is not None:
                print(f"{rec.where()}: skipped: {str(err).split(': ', 1)[-1]}", file=log)
            continue
        kept.append(i)
        for col, item in zip(columns, encoded):
            col.append(item)
    return kept, columns


def pair_probabilities(model, records, paradigm="pairwise", debias=False, batch_size=None, cot_format=None,
                       log=sys.stderr):
    """P(image 2 better) for each record: (p float32 [N'], kept indices list[int] into ``records``).

    Records the model rejects (too long with their images) are reported and left out of ``kept``.
    """
    if paradigm == "regressive":
        if not isinstance(model, RegressiveRewardModel):
            raise TypeError("the regressive paradigm needs a RegressiveRewardModel")
        rm = model.rm
        kept, (a, b) = _encode_each(rm, records, rm.instruction, log)
        if not kept:
            return torch.zeros(0), kept
        r1, r2 = model.rewards(a, batch_size), model.rewards(b, batch_size)
        return torch.sigmoid(r2 - r1).float().cpu(), kept
    rm = model
    if paradigm == "pointwise":
        kept, (a, b) = _encode_each(rm, records, rm.instruction, log)
        if not kept:
            return torch.zeros(0), kept
        s1, s2 = rm.item_logprobs(a, batch_size), rm.item_logprobs(b, batch_size)
        return torch.sigmoid((s2[:, 0] - s2[:, 1]) - (s1[:, 0] - s1[:, 1])).float().cpu(), kept
    if paradigm not in ("pairwise", "cot"):
        raise ValueError(f"unknown paradigm {paradigm!r}")
    if paradigm == "cot" and cot_format == "reasons_first":
        kept, p = [], []
        for i, rec in enumerate(records):
            out = rm.explain([rec.prompt], instruction=rec.instruction, cot_format="reasons_first",
                          **media_kwargs([rec]))[0]
            kept.append(i)
            p.append(out["p_yes"])
        return torch.tensor(p, dtype=torch.float32), kept
    return _compare(rm, records, debias, batch_size, log)


def _compare(rm, records, debias, batch_size, log):
    """rm.compare over records grouped by instruction and media (the scorer's own path); rejected items are
    dropped."""
    groups = defaultdict(list)
    for i, rec in enumerate(records):
        groups[rec.instruction, media_group(rec)].append(i)
    p = {}
    for (instruction, _), rows in groups.items():
        while rows:
            recs = [records[i] for i in rows]
            try:
                out = rm.compare(**media_kwargs(recs), prompts=[r.prompt for r in recs], instruction=instruction,
                                 debias=debias, batch_size=batch_size)
            except InputError as err:
                if err.index is None:
                    raise
                if log is not None:
                    print(f"{recs[err.index].where()}: skipped: {str(err).split(': ', 1)[-1]}", file=log)
                rows = rows[: err.index] + rows[err.index + 1 :]
                continue
            p.update(zip(rows, out.float().cpu().tolist()))
            break
    kept = sorted(p)
    return torch.tensor([p[i] for i in kept], dtype=torch.float32), kept


def accuracy(p: torch.Tensor, labels) -> tuple[float, int]:
    """(accuracy over non-tie pairs, number of non-tie pairs); a pair is right when (p > 0.5) == (label == 2)."""
    hits = [(float(pi) > 0.5) == (lab == 2) for pi, lab in zip(p.tolist(), labels) if lab != TIE]
    return (sum(hits) / len(hits) if hits else float("nan")), len(hits)


def predict_with_ties(p: torch.Tensor, threshold: float) -> list:
    """1, 2 or "tie" per pair: a tie when |p - 0.5| <= threshold (a negative threshold never predicts one)."""
    return [TIE if abs(pi - 0.5) <= threshold else (2 if pi > 0.5 else 1) for pi in p.tolist()]


def accuracy_with_ties(p: torch.Tensor, labels, threshold: float) -> float:
    """Three-way accuracy over all pairs (ties included) at a tie threshold."""
    pred = predict_with_ties(p, threshold)
    return sum(a == b for a, b in zip(pred, labels)) / len(labels) if len(labels) else float("nan")


def tune_tie_threshold(p: torch.Tensor, labels) -> float:
    """The tie threshold that maximises three-way accuracy on (p, labels); the smallest among equals.

    Candidates: "never a tie" (-1) and every |p_i - 0.5| (each changes the prediction of one pair at least).
    """
    candidates = sorted({-1.0} | {abs(x - 0.5) for x in p.tolist()})
    best, best_acc = -1.0, -1.0
    for t in candidates:
        acc = accuracy_with_ties(p, labels, t)
        if acc > best_acc:
            best, best_acc = t, acc
    return best


def _metrics(p, labels, threshold):
    acc, n = accuracy(p, labels)
    return {"n_pairs": len(labels), "n_ties": sum(lab == TIE for lab in labels), "accuracy": acc,
            "n_accuracy": n, "accuracy_with_ties": accuracy_with_ties(p, labels, threshold)}


def evaluate(model, records, val_records=None, paradigm="pairwise", debias=False, tie_threshold=None,
             batch_size=None, cot_format=None, log=sys.stderr) -> dict:
    """Accuracy of ``model`` on ``records`` (the test split).

    Returns {"paradigm", "n_pairs", "n_ties", "accuracy" (non-tie pairs), "n_accuracy", "accuracy_with_ties",
    "tie_threshold", "tie_threshold_from" ("validation", "given" or "none": never predicts a tie),
    "by_instruction": {name: same keys}, "probabilities": [p per kept test pair], "lines": [their line numbers],
    "validation": metrics on val_records at the tuned threshold (when given)}.
    """
    tokenizer = getattr(model, "rm", model).tokenizer
    records = reject_special_tokens(records, tokenizer, log=log)  # user text with special tokens: reported, skipped
    val_records = reject_special_tokens(val_records or [], tokenizer, log=log)
    p, kept = pair_probabilities(model, records, paradigm, debias, batch_size, cot_format, log)
    labels = [records[i].label for i in kept]
    result = {"paradigm": paradigm, "debias": debias}
    if val_records:
        vp, vkept = pair_probabilities(model, val_records, paradigm, debias, batch_size, cot_format, log)
        vlabels = [val_records[i].label for i in vkept]
        threshold, source = tune_tie_threshold(vp, vlabels), "validation"
        result["validation"] = _metrics(vp, vlabels, threshold)
    elif tie_threshold is not None:
        threshold, source = float(tie_threshold), "given"
    else:
        threshold, source = -1.0, "none"
    result.update(_metrics(p, labels, threshold))
    result.update(tie_threshold=threshold, tie_threshold_from=source)
    default = getattr(model, "rm", model).instruction
    groups = defaultdict(list)
    for row, i in enumerate(kept):
        groups[records[i].instruction or default or "overall"].append(row)
    result["by_instruction"] = {
        name: _metrics(p[rows], [labels[r] for r in rows], threshold) for name, rows in sorted(groups.items())
    }
    result["probabilities"] = p.tolist()
    result["lines"] = [records[i].line for i in kept]
    return result
