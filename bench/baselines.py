"""The plain-transformers ways to score that bench/throughput.py measures rdfast against.

naive: one sequence at a time with full-sequence logits, as public scorers do.
hf_batched: padded batches of 16 through the model's forward with logits_to_keep=1.
hf_expert: what an expert writes with transformers alone: each distinct image's (or video's) features
computed once through the model's own ``get_image_features`` / ``get_video_features`` and handed back to
its forward as ``mm_encoder_outputs`` (transformers 5.x's input for precomputed encoder outputs), padded
batches of 16 through the base model, the LM head applied to the contiguous 2-D last hidden state [B, H]
(transformers' own head call runs on a strided [B, 1, H] view, a slow batched matmul on CPU), under
inference_mode, same dtype and attention implementation as rdfast. Its "matched" variant runs on a copy
of the model whose linears take rdfast's GEMM path (rdfast.cpu_speed, when present) under rdfast's CPU
thread policy (rdfast.cpu_threads).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass

import torch

from rdfast.cpu_threads import cpu_scoring_threads

PIXEL_KEYS = ("pixel_values", "pixel_values_videos")


def answer_logprobs(rm, logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1)[:, [rm.yes_token_id, rm.no_token_id]]


def run_hf_batched(rm, items, batch=16, model=None):
    model = rm.model if model is None else model
    out = []
    with torch.inference_mode():
        for start in range(0, len(items), batch):
            inputs = rm.collate(items[start : start + batch])
            out.append(answer_logprobs(rm, model(**inputs, logits_to_keep=1).logits[:, -1]))
    return torch.cat(out)


def run_naive(rm, items, model=None):
    model = rm.model if model is None else model
    out = []
    with torch.inference_mode():
        for it in items:
            logits = model(**rm.collate([it])).logits  # full-sequence logits, as public scorers do
            out.append(answer_logprobs(rm, logits[:, -1]))
    return torch.cat(out)


@dataclass
class MediaFeatures:
    """One medium's encoder output in transformers' layout: its modality key in ``mm_encoder_outputs``, its
    pooled features [n_tokens, D], per-layer deepstack features (Qwen3-VL) and the output class."""

    modality: str
    pooled: torch.Tensor
    deepstack: list | None
    output_class: type
    as_tuple: bool  # Qwen families take a tuple of per-medium tensors, InternVL one [N, D] tensor


def distinct_media_features(model, family, media, dtype, device, chunk: int = 16) -> dict[int, MediaFeatures]:
    """id(medium) -> its features, each distinct medium through the vision tower once (in chunks)."""
    base = getattr(model, model.base_model_prefix)
    out = {}
    for kind in ("image", "video"):
        group = [m for m in media if m.kind == kind]
        for start in range(0, len(group), chunk):
            part = group[start : start + chunk]
            pix = family.collate_images(part, dtype, device)
            if "pixel_values_videos" in pix:
                modality = "video"
                res = base.get_video_features(pix["pixel_values_videos"], pix.get("video_grid_thw"), return_dict=True)
            else:  # images, and InternVL's video frames (its forward takes them as images)
                modality = "image"
                extra = {"image_grid_thw": pix["image_grid_thw"]} if "image_grid_thw" in pix else {}
                res = base.get_image_features(pixel_values=pix["pixel_values"], return_dict=True, **extra)
            pooled = res.pooler_output
            as_tuple = isinstance(pooled, (tuple, list))
            pieces = list(pooled) if as_tuple else list(pooled.reshape(-1, pooled.shape[-1]).split([m.n_tokens for m in part]))
            deep = getattr(res, "deepstack_features", None)
            for k, m in enumerate(part):
                out[id(m)] = MediaFeatures(modality, pieces[k], [layer[k] for layer in deep] if deep else None,
                                           type(res), as_tuple)
    return out


def encoder_outputs(items, feats: dict[int, MediaFeatures]) -> dict:
    """``mm_encoder_outputs`` for one batch: its media's features in sequence order, per modality."""
    by_modality = {}
    for it in items:
        for m in it.media:
            by_modality.setdefault(feats[id(m)].modality, []).append(feats[id(m)])
    out = {}
    for modality, fs in by_modality.items():
        kw = {"pooler_output": tuple(f.pooled for f in fs) if fs[0].as_tuple else torch.cat([f.pooled for f in fs])}
        if fs[0].deepstack is not None:
            kw["deepstack_features"] = [tuple(f.deepstack[k] for f in fs) for k in range(len(fs[0].deepstack))]
        out[modality] = fs[0].output_class(**kw)
    return out


def takes_encoder_outputs(base) -> bool:
    """Whether this transformers version's forward accepts precomputed ``mm_encoder_outputs`` (5.x releases
    before it existed encode every image in each batch: hf_expert then keeps only the 2-D head call)."""
    return "mm_encoder_outputs" in inspect.signature(base.forward).parameters


def run_hf_expert(rm, items, model=None, batch: int = 16, threads: bool = False):
    """log P(yes), log P(no) [N, 2] through plain transformers as an expert writes it (module docstring).
    ``model``: the transformers model to run (default rm.model); ``threads``: under rdfast's CPU thread policy."""
    model = rm.model if model is None else model
    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    policy = cpu_scoring_threads(rm.device) if threads else contextlib.nullcontext()
    out = []
    with torch.inference_mode(), policy:
        feats = None
        if takes_encoder_outputs(base):
            media = list({id(m): m for it in items for m in it.media}.values())
            feats = distinct_media_features(model, rm.family, media, rm.dtype, rm.device)
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            inputs = rm.collate(part)  # left-padded
            if feats is not None:
                inputs = {k: v for k, v in inputs.items() if k not in PIXEL_KEYS}
                inputs["mm_encoder_outputs"] = encoder_outputs(part, feats)
            hidden = base(**inputs, use_cache=False).last_hidden_state
            out.append(answer_logprobs(rm, head(hidden[:, -1].contiguous())))  # [B, H] @ W^T: a 2-D GEMM
    return torch.cat(out)


def baseline_models(rm) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(stock, matched, which path): the models the baselines run. rdfast loads CPU models onto its fast path
    (rdfast.cpu_speed.speed_up_cpu), so the stock baselines run a copy with that undone (what plain transformers
    gives a user), and the matched one a copy of that with only rdfast's GEMM library path (fast_cpu_linears)."""
    if rm.device.type != "cpu":
        return rm.model, rm.model, "stock (GPU: no CPU GEMM path to match)"
    try:
        from rdfast.cpu_packed import fast_cpu_linears
        from rdfast.cpu_speed import restore
    except ImportError:
        return rm.model, rm.model, "stock (rdfast.cpu_speed absent): thread policy only"
    stock = copy.deepcopy(rm.model)
    restore(stock)
    matched = copy.deepcopy(stock)
    n = fast_cpu_linears(matched)
    return stock, matched, f"rdfast.cpu_packed.fast_cpu_linears ({n} linears) + thread policy"
