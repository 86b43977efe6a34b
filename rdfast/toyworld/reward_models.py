"""The toy reward models (issue 13, deliverable 3): tiny Qwen2-VLs at three sizes, each warmed up once and then
trained as a generative pairwise RM (with a reference image), a generative pointwise verifier and a
regressive Bradley-Terry baseline, on the same pairs with the same budget; evaluated as saved.

Stages are cached in an output folder, so an interrupted run continues where it stopped::

    out/data.json                    the pair specifications and counts (records are re-rendered from seeds)
    out/<size>/base/                 the random tiny checkpoint (rdfast.testing.tiny_checkpoint, config SIZES)
    out/<size>/warmup/ + warmup.json the shared warm-up (``warmup.py``)
    out/<size>/<paradigm>/           the trained reward model (rdfast.train's directory; resumes from its
                                     checkpoints) + result.json (the metrics of the directory as loaded)

    from rdfast.toyworld import reward_models as trm
    results = trm.run("out/rm", sizes=("small", "medium"), budget=trm.BUDGETS["full"])

Metrics (issue 13's "Done when"): pairwise accuracy = P(image 2 better) > 0.5 exactly when image 2 is the
aligned one, every pair counted in both image orders, ``debias=False``, in-domain and OOD apart; the pointwise
verifier's ROC-AUC of P(yes) on aligned against misaligned renders (single images).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

import torch

from ..model import RewardModel
from ..testing import tiny_checkpoint
from ..train import TrainConfig, Trainer, evaluate, load_trained
from . import warmup
from .data import INSTRUCTION, both_orders, render_pairs, roc_auc, verifier_items

PARADIGMS = ("pairwise", "pointwise", "regressive")
#: stages beyond one per paradigm: name -> (paradigm, the stage it starts from instead of the warm-up). The pairwise
#: objective alone from the warm-up stalled at 0.80 / 0.57 (ID / OOD); the trained verifier already grounds each
#: attribute, so a pairwise RM started from it reached 0.90 / 0.76 (bench/results/toy_reward_models_cpu.json)
STAGES = {**{p: (p, None) for p in PARADIGMS}, "pairwise_from_verifier": ("pairwise", "pointwise")}
#: the shipped models (package data): ``MODELS_DIR/pairwise`` (the best pairwise RM), ``MODELS_DIR/verifier``
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
#: config overrides of rdfast.testing's tiny Qwen2-VL (text 64 x 2 layers, vision 64 x 2 blocks, ~1k vocabulary)
SIZES = {
    "small": dict(text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                                   tie_word_embeddings=True), tie_word_embeddings=True,
                  vision_config=dict(embed_dim=32, hidden_size=32, num_heads=2)),
    "medium": {},
    "large": dict(text_config=dict(hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=4,
                                   num_hidden_layers=4),
                  vision_config=dict(embed_dim=128, hidden_size=128, num_heads=8, depth=2)),
}
BUDGETS = {
    # train_synthetic's recipe (0.935 / 0.85 in-domain / OOD pairwise accuracy with the medium size there): about
    # 11 minutes per size on 2 idle cores; its yes/no VQA probe left chance only after about 3600 warm-up steps
    "full": dict(train_pairs=8000, test_pairs=200, graded=0.25, warmup_steps=6000, warmup_batch=16, warmup_lr=1e-3,
                 steps=1200, batch=16, lr=3e-4, seed=0),
    # a third of the warm-up and half the steps: what a heavily loaded machine allowed (every model at chance)
    "reduced": dict(train_pairs=8000, test_pairs=200, graded=0.25, warmup_steps=2000, warmup_batch=16, warmup_lr=1e-3,
                    steps=600, batch=16, lr=3e-4, seed=0),
    "smoke": dict(train_pairs=16, test_pairs=4, graded=0.25, warmup_steps=2, warmup_batch=4, warmup_lr=1e-3,
                  steps=2, batch=4, lr=1e-4, seed=0),
}
_DATA_SEEDS = {"train": 0, "test": 1, "ood": 2}  # added to budget["seed"] * 10: independent layouts per set


def datasets(budget: dict) -> dict:
    """{"train", "in_domain", "in_domain_graded", "ood"}: PreferenceRecords (the test sets in both orders)."""
    base = budget["seed"] * 10
    test = render_pairs(budget["test_pairs"], "in_domain", base + _DATA_SEEDS["test"], graded=0.25)
    return {
        "train": render_pairs(budget["train_pairs"], "in_domain", base + _DATA_SEEDS["train"], budget["graded"]),
        "in_domain": both_orders([r for r in test if r.extra["kind"] == "aligned"]),
        "in_domain_graded": both_orders([r for r in test if r.extra["kind"] == "graded"]),
        "ood": both_orders(render_pairs(budget["test_pairs"], "ood", base + _DATA_SEEDS["ood"], graded=0.0)),
    }


def parameter_count(path) -> int:
    """Total parameters of the saved model at ``path`` (every tensor of its safetensors files)."""
    from safetensors import safe_open  # heavy

    total = 0
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), "pt") as fh:
                total += sum(torch.Size(fh.get_slice(key).get_shape()).numel() for key in fh.keys())
    return total


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _write(path, obj) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"  # stages of one run may write side by side
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)  # a reader never sees a torn file; an interrupted stage leaves no result


def measure(path, sets: dict, paradigm: str, log=sys.stderr) -> dict:
    """Metrics of the reward model saved at ``path``, loaded as a user loads it (float32 CPU unless saved
    otherwise): pairwise accuracy per set (``debias=False``) and, for the pointwise verifier, ROC-AUC."""
    model, saved = load_trained(path, device="cpu")
    if saved != paradigm:
        raise ValueError(f"{path} holds a {saved} model, not {paradigm}")
    out = {"paradigm": paradigm, "params": parameter_count(path)}
    with torch.no_grad():
        for name in ("in_domain", "ood", "in_domain_graded"):
            if sets.get(name):
                result = evaluate(model, sets[name], paradigm=paradigm, debias=False, log=log)
                out[f"{name}_acc"] = result["accuracy"]
                out[f"{name}_pairs"] = result["n_pairs"]
        if paradigm == "pointwise":
            for name in ("in_domain", "ood"):
                images, texts, labels = verifier_items(sets[name])
                if 0 < sum(labels) < len(labels):
                    out[f"{name}_auc"] = roc_auc(model.score(images, texts).tolist(), labels)
    out["id_acc"], out["ood_acc"] = out.get("in_domain_acc"), out.get("ood_acc")
    return out


def base_checkpoint(size: str, out_dir) -> str:
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {tuple(SIZES)}")
    return os.fspath(tiny_checkpoint("qwen2_vl", cache_dir=os.path.join(out_dir, "bases"), **SIZES[size]))


def warmup_stage(size: str, out_dir, budget: dict, log=sys.stderr) -> str:
    """The size's warm-up checkpoint (trained once, then read from ``out_dir/<size>/warmup``)."""
    folder = os.path.join(out_dir, size)
    done, target = os.path.join(folder, "warmup.json"), os.path.join(folder, "warmup")
    if not os.path.exists(done):
        os.makedirs(folder, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # a warm-up killed half-way restarts from step 0
        if log is not None:
            print(f"{size}: warm-up, {budget['warmup_steps']} steps of {budget['warmup_batch']}", file=log, flush=True)
        history = warmup.warm_up(base_checkpoint(size, out_dir), target, budget["warmup_steps"],
                                 budget["warmup_batch"], budget["warmup_lr"], budget["seed"], log=log)
        _write(done, history)
    return target


def warmup_summary(out_dir, size: str) -> dict:
    """The cached warm-up's seconds, yes/no VQA probes ([step, accuracy]) and last loss."""
    history = _read(os.path.join(out_dir, size, "warmup.json"))
    return {"seconds": history["seconds"], "yes_no_vqa": history["yes_no_vqa"], "last_loss": history["loss"][-1]}


def paradigm_stage(size: str, stage: str, out_dir, budget: dict, sets: dict, log=sys.stderr) -> dict:
    """Train (or resume, or read) one reward model (a STAGES name) from the size's warm-up or from the stage it
    names; its metrics as saved (``paradigm`` says which objective, ``stage`` which run)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {tuple(STAGES)}")
    paradigm, start = STAGES[stage]
    folder = os.path.join(out_dir, size, stage)
    done = folder + ".json"
    if os.path.exists(done):
        return _read(done)
    if start is None:
        init = warmup_stage(size, out_dir, budget, log)
    else:
        paradigm_stage(size, start, out_dir, budget, sets, log)
        init = os.path.join(out_dir, size, start)
    steps = budget["steps"]
    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(folder, "rdfast_config.json")):
        # a stage started from another sees the pairs in another order than that stage did
        seed = budget["seed"] + (start is not None)
        config = TrainConfig(paradigm=paradigm, finetune="full", learning_rate=budget["lr"],
                             batch_size=budget["batch"], max_steps=steps, warmup_steps=max(1, steps // 20),
                             lr_schedule="cosine", instruction=INSTRUCTION, seed=seed, progress=log is not None,
                             max_grad_norm=1.0, save_every=max(1, steps // 4), keep_checkpoints=1)
        if log is not None:
            print(f"{size}: {stage}, {steps} steps of {budget['batch']} pairs", file=log, flush=True)
        Trainer(init, config, sets["train"], output_dir=folder, log=log).train(resume="auto")
    result = measure(folder, sets, paradigm, log)
    result.update(size=size, stage=stage, seconds=round(time.perf_counter() - t0, 1))
    _write(done, result)
    return result


def read_budget(out_dir) -> dict:
    """The budget of the run cached in ``out_dir``."""
    return _read(os.path.join(out_dir, "data.json"))["budget"]


def run(out_dir, sizes=("medium",), paradigms=PARADIGMS, budget: dict | None = None, log=sys.stderr) -> list[dict]:
    """Every (size, STAGES name) stage in order, each trained once and cached; returns their metrics."""
    budget = dict(budget or BUDGETS["full"])
    os.makedirs(out_dir, exist_ok=True)
    spec = os.path.join(out_dir, "data.json")
    if os.path.exists(spec) and _read(spec)["budget"] != budget:
        raise ValueError(f"{out_dir} holds a run with another budget ({_read(spec)['budget']}); use a new folder")
    sets = datasets(budget)
    _write(spec, {"budget": budget, "pairs": {k: len(v) for k, v in sets.items()},
                  "train_kinds": {k: sum(r.extra["kind"] == k for r in sets["train"]) for k in ("aligned", "graded")},
                  "sources": sorted({r.extra["source"] for v in sets.values() for r in v})})
    return [paradigm_stage(size, paradigm, out_dir, budget, sets, log) for size in sizes for paradigm in paradigms]


def ship(trained_dir, dest, dtype: torch.dtype | None = None) -> str:
    """Copy a trained reward model to ``dest`` as a ``RewardModel.from_pretrained`` directory (no checkpoints,
    no plot), its weights cast to ``dtype`` when given (e.g. torch.bfloat16 to halve the files)."""
    from safetensors.torch import load_file, save_file  # heavy

    tmp = os.fspath(dest) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(trained_dir, tmp, ignore=shutil.ignore_patterns("checkpoints", "*.png", "train_history.json"))
    if dtype is not None:
        for name in os.listdir(tmp):
            if name.endswith(".safetensors"):
                path = os.path.join(tmp, name)
                tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
                save_file(tensors, path, metadata={"format": "pt"})
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    RewardModel.from_pretrained(dest, device="cpu")  # fails here, not in a user's hands, if the copy is incomplete
    return os.fspath(dest)
