"""The toy reward models (issue 13, deliverable 3): tiny Qwen2-VLs at three sizes, each warmed up once and then
trained as a generative pairwise RM (with a reference image), a generative pointwise verifier and a
regressive Bradley-Terry baseline, on the same pairs with the same budget; evaluated as saved.

Stages are cached in an output folder, so an interrupted run continues where it stopped::

    out/data.json                    the budget, the preference data's folder and digest, the set sizes
    out/preference/                  preference data given in memory (``preference.save``); a folder is used as is
    out/<size>/base/                 the random tiny checkpoint (rdfast.testing.tiny_checkpoint, config SIZES)
    out/<size>/warmup/ + warmup.json the shared warm-up (``warmup.py``)
    out/<size>/<paradigm>/           the trained reward model (rdfast.train's directory; resumes from its
                                     checkpoints) + result.json (the metrics of the directory as loaded)

    from rdfast.toyworld import reward_models as trm
    results = trm.run("out/rm", sizes=("small", "medium"), budget=trm.BUDGETS["full"])
    results = trm.run("out/rm", trm.SIZES, trm.PARADIGMS, trm.BUDGETS["full"], preference="out/pref", workers=2)
    trm.estimate(trm.SIZES, trm.PARADIGMS, trm.BUDGETS["full"], workers=2)   # the plan from STEP_SECONDS

Training data: renderer pairs only (``budget["train_pairs"]``), or with ``preference=`` the pairs of a
``preference.PreferenceData`` (generator samples labelled by the oracle, plus renderer pairs). ``workers=2`` runs
stages in two one-thread processes side by side (``schedule.py``), each stage once its warm-up is done.

Metrics (issue 13's "Done when"): pairwise accuracy = P(image 2 better) > 0.5 exactly when image 2 is the
aligned one, every pair counted in both image orders, ``debias=False``, on fresh renders in-domain
(``id_acc``) and OOD (``ood_acc``), graded render pairs, and held-out generator pairs on in-domain and OOD
prompts (``generator_acc``, ``generator_ood_acc`` and their ``_graded_acc``, with preference data only); the
pointwise verifier's ROC-AUC of P(yes) on aligned against misaligned single images (``in_domain_auc``,
``ood_auc``, ``generator_auc``, ``generator_ood_auc``).
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
from . import preference as pref
from . import schedule, warmup
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
    # medium, reading each 64-px image at 112 px. The tiny processor's default makes it 56 px: 4x4 patches of 14 px
    # merged into 4 image tokens, too coarse to count 12-20 px objects; 112 px gives 8x8 patches (8 source px
    # each) and 16 tokens. Its warm-up's yes/no probe reached 0.83 against medium's 0.70 (README, shipped models)
    "medium_112px": dict(image_processor=dict(min_pixels=112 * 112, max_pixels=112 * 112)),
}
STUDY_SIZES = ("small", "medium", "large")  #: the study's size axis (same image resolution, growing model)
BUDGETS = {
    # train_synthetic's recipe (0.935 / 0.85 in-domain / OOD pairwise accuracy with the medium size there); its
    # yes/no VQA probe left chance only after about 3600 warm-up steps. All 3 sizes x 3 paradigms are planned
    # within the study's 45 minutes on two one-thread workers: ``estimate()`` (the large size's warm-up is the
    # longest stage; ``test_schedule.py`` keeps the plan under 45 minutes)
    "full": dict(train_pairs=8000, test_pairs=200, graded=0.25, warmup_steps=6000, warmup_batch=16, warmup_lr=1e-3,
                 steps=1200, batch=16, lr=3e-4, seed=0),
    # a third of the warm-up and half the steps: what a heavily loaded machine allowed (every model at chance)
    "reduced": dict(train_pairs=8000, test_pairs=200, graded=0.25, warmup_steps=2000, warmup_batch=16, warmup_lr=1e-3,
                    steps=600, batch=16, lr=3e-4, seed=0),
    # the shipped models' recipe: as full, with 4000 steps per stage (on the larger preference data, README)
    "long": dict(train_pairs=8000, test_pairs=200, graded=0.25, warmup_steps=6000, warmup_batch=16, warmup_lr=1e-3,
                 steps=4000, batch=16, lr=3e-4, seed=0),
    "smoke": dict(train_pairs=16, test_pairs=4, graded=0.25, warmup_steps=2, warmup_batch=4, warmup_lr=1e-3,
                  steps=2, batch=4, lr=1e-4, seed=0),
}
_DATA_SEEDS = {"train": 0, "test": 1, "ood": 2}
#: the test sets ``measure`` reports (those present): renders in-domain, OOD and graded; held-out generator pairs
TEST_SETS = ("in_domain", "ood", "in_domain_graded", "generator", "generator_graded", "generator_ood",
             "generator_ood_graded")  # added to budget["seed"] * 10: independent layouts per set


def datasets(budget: dict, preference=None) -> dict:
    """{"train", "in_domain", "in_domain_graded", "ood"}: PreferenceRecords (the test sets in both orders).

    preference: a ``preference.PreferenceData`` (or its folder): training on its pairs (generator + renderer)
    instead of ``budget["train_pairs"]`` renderer pairs, and adding its held-out generator pairs as the test sets
    "generator" and "generator_graded", and those on OOD prompts as "generator_ood" and "generator_ood_graded".
    The renderer test sets are the same either way."""
    base = budget["seed"] * 10
    test = render_pairs(budget["test_pairs"], "in_domain", base + _DATA_SEEDS["test"], graded=0.25)
    sets = {
        "in_domain": both_orders([r for r in test if r.extra["kind"] == "aligned"]),
        "in_domain_graded": both_orders([r for r in test if r.extra["kind"] == "graded"]),
        "ood": both_orders(render_pairs(budget["test_pairs"], "ood", base + _DATA_SEEDS["ood"], graded=0.0)),
    }
    if preference is None:
        sets["train"] = render_pairs(budget["train_pairs"], "in_domain", base + _DATA_SEEDS["train"], budget["graded"])
        return sets
    if not isinstance(preference, pref.PreferenceData):
        preference = pref.load(preference)
    sets["train"] = list(preference.train)
    for name, held_out in (("generator", preference.test_generator), ("generator_ood", preference.test_generator_ood)):
        sets[name] = both_orders([r for r in held_out if r.extra["kind"] == "aligned"])
        sets[name + "_graded"] = both_orders([r for r in held_out if r.extra["kind"] == "graded"])
    return sets


def cached_spec(out_dir) -> dict:
    """What the run cached in ``out_dir`` was made from: its budget, preference data (or None) and set sizes."""
    return _read(os.path.join(out_dir, "data.json"))


def cached_datasets(out_dir) -> dict:
    """The sets of the run cached in ``out_dir`` (its budget and, if it had one, its preference data folder)."""
    spec = cached_spec(out_dir)
    return datasets(spec["budget"], (spec.get("preference") or {}).get("path"))


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
    otherwise): pairwise accuracy per set (``debias=False``; TEST_SETS first, then any other set but "train")
    and, for the pointwise verifier, ROC-AUC."""
    model, saved = load_trained(path, device="cpu")
    if saved != paradigm:
        raise ValueError(f"{path} holds a {saved} model, not {paradigm}")
    out = {"paradigm": paradigm, "params": parameter_count(path)}
    extra = [name for name in sets if name not in TEST_SETS and name != "train"]  # e.g. refresh.py's drifted pairs
    with torch.no_grad():
        for name in (*TEST_SETS, *extra):
            if sets.get(name):
                result = evaluate(model, sets[name], paradigm=paradigm, debias=False, log=log)
                out[f"{name}_acc"] = result["accuracy"]
                out[f"{name}_pairs"] = result["n_pairs"]
        if paradigm == "pointwise":
            for name in ("in_domain", "ood", "generator", "generator_ood"):
                images, texts, labels = verifier_items(sets.get(name) or [])
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
    return cached_spec(out_dir)["budget"]


#: seconds of one thread (time.process_time) per step: the warm-up's batch of 16 and each paradigm's 16 pairs,
#: measured by ``bench/toy_reward_models.py --costs`` (bench/results/toy_rm_step_costs_cpu.json); the plan only
STEP_SECONDS = {
    "small": {"warmup": 0.039, "pairwise": 0.069, "pointwise": 0.062, "regressive": 0.058},
    "medium": {"warmup": 0.054, "pairwise": 0.128, "pointwise": 0.096, "regressive": 0.084},
    "large": {"warmup": 0.154, "pairwise": 0.292, "pointwise": 0.230, "regressive": 0.226},
    # wall seconds of the shipped run's stages over their steps (one thread, beside one other stage; regressive
    # not run: scaled from pointwise as for medium)
    "medium_112px": {"warmup": 0.238, "pairwise": 0.45, "pointwise": 0.34, "regressive": 0.30},
}
STAGE_OVERHEAD_SECONDS = 15.0  #: per stage: building the sets in its process, loading, evaluating, saving


def _tasks(sizes, stages) -> dict:
    """{(size, stage): the task it waits for}: every stage asked for, the stages they start from, and warm-ups."""
    deps = {}
    for size in sizes:
        if size not in SIZES:
            raise ValueError(f"size {size!r} is not one of {tuple(SIZES)}")
        deps[(size, "warmup")] = set()
        todo = list(stages)
        while todo:
            stage = todo.pop()
            if stage not in STAGES:
                raise ValueError(f"stage {stage!r} is not one of {tuple(STAGES)}")
            start = STAGES[stage][1]
            deps[(size, stage)] = {(size, start or "warmup")}
            if start is not None:
                todo.append(start)
    return deps


def stage_seconds(size: str, stage: str, budget: dict, step_seconds: dict | None = None) -> float:
    """The planned seconds of one stage on one thread (``step_seconds``, default STEP_SECONDS, x steps +
    STAGE_OVERHEAD_SECONDS)."""
    costs = (step_seconds or STEP_SECONDS)[size]
    if stage == "warmup":
        return budget["warmup_steps"] * costs["warmup"] * budget["warmup_batch"] / 16 + STAGE_OVERHEAD_SECONDS
    return budget["steps"] * costs[STAGES[stage][0]] * budget["batch"] / 16 + STAGE_OVERHEAD_SECONDS


def estimate(sizes=STUDY_SIZES, paradigms=PARADIGMS, budget: dict | None = None, workers: int = 2,
             step_seconds: dict | None = None) -> dict:
    """The plan of ``run(..., workers=workers)`` from STEP_SECONDS: {"core_seconds", "seconds" (until the last
    stage ends, one thread per worker, no other load), "stages": {"size/stage": seconds}}."""
    budget = dict(budget or BUDGETS["full"])
    deps = _tasks(sizes, paradigms)
    costs = {task: stage_seconds(*task, budget, step_seconds) for task in deps}
    return {"core_seconds": round(sum(costs.values())), "seconds": round(schedule.makespan(costs, deps, workers)),
            "workers": workers, "stages": {f"{s}/{t}": round(c) for (s, t), c in costs.items()}}


def _done(out_dir, task) -> bool:
    size, stage = task
    return os.path.exists(os.path.join(out_dir, size, "warmup.json" if stage == "warmup" else stage + ".json"))


def _stage_job(task, out_dir, budget: dict, verbose: bool) -> None:
    """One stage in a worker process (``schedule.run_parallel``); its result stays in its cache."""
    size, stage = task
    log = sys.stderr if verbose else None
    if stage == "warmup":
        warmup_stage(size, out_dir, budget, log)
    else:
        paradigm_stage(size, stage, out_dir, budget, cached_datasets(out_dir), log)


def _preference_spec(out_dir, preference) -> tuple[dict | None, object]:
    """Load (a folder) or save (in-memory data, to out_dir/preference) the preference data: (what data.json
    records of it: its folder, digest and info; the PreferenceData)."""
    if preference is None:
        return None, None
    if isinstance(preference, pref.PreferenceData):
        data, path = preference, os.path.join(out_dir, "preference")
        saved = os.path.join(path, "pairs.json")
        if not os.path.exists(saved) or _read(saved).get("digest") != data.digest():
            pref.save(data, path)
    else:
        path = os.path.abspath(os.fspath(preference))
        data = pref.load(path)
    return {"path": os.path.abspath(path), "digest": data.digest(), "info": data.info}, data


def run(out_dir, sizes=("medium",), paradigms=PARADIGMS, budget: dict | None = None, log=sys.stderr, *,
        preference=None, workers: int = 1) -> list[dict]:
    """Every (size, STAGES name) stage, each trained once and cached; returns their metrics in (size, stage) order.

    preference: a ``preference.PreferenceData`` or its saved folder: train on its generator + renderer pairs and
    report the held-out generator pairs too (``datasets``); None trains on ``budget["train_pairs"]`` renders.
    workers: stages run in this many processes side by side, one thread each (``schedule``; 1 = in this process,
    in order). A cached run continues only with the same budget and the same preference data."""
    budget = dict(budget or BUDGETS["full"])
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer")
    deps = _tasks(sizes, paradigms)
    os.makedirs(out_dir, exist_ok=True)
    spec_path = os.path.join(out_dir, "data.json")
    old = _read(spec_path) if os.path.exists(spec_path) else None
    if old is not None and old["budget"] != budget:
        raise ValueError(f"{out_dir} holds a run with another budget ({old['budget']}); use a new folder")
    spec, data = _preference_spec(out_dir, preference)
    if old is not None and (old.get("preference") or {}).get("digest") != (spec or {}).get("digest"):
        raise ValueError(f"{out_dir} holds a run trained on other preference data ({old.get('preference')}); "
                         "use a new folder")
    sets = datasets(budget, data)
    _write(spec_path, {"budget": budget, "preference": spec, "pairs": {k: len(v) for k, v in sets.items()},
                       "train_kinds": {k: sum(r.extra["kind"] == k for r in sets["train"]) for k in ("aligned", "graded")},
                       "train_sources": {s: sum(r.extra["source"] == s for r in sets["train"])
                                         for s in ("generator", "renderer")}})
    if workers > 1:
        todo = {t: d for t, d in deps.items() if not _done(out_dir, t)}
        schedule.run_parallel(_stage_job, {t: stage_seconds(*t, budget) for t in todo},
                              {t: {u for u in d if u in todo} for t, d in todo.items()}, workers, out_dir, budget,
                              log is not None)
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
