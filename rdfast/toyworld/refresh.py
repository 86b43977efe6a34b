"""Refreshing a pairwise reward model on the samples of generators it has aligned (issue 13): one more round of
preference data, this time from where ReFL takes the generator.

Why: ReFL moves the generator to samples the reward model never saw, and its errors there are what ReFL finds and
exploits. Measured on the shipped ``toy:pairwise`` (README, "Refreshing the pairwise RM"): aligned-vs-misaligned
accuracy falls from 0.88 on base samples to 0.84 on the samples of a ReFL'd generator, and on graded pairs (one
attribute wrong beats two) from 0.59 to 0.42, worse than chance. The recipe, each stage cached in ``out``::

    out/recipe.json                what the data stages were made with (a folder made otherwise is refused)
    out/round1/gen_s<k>/ + .json   ReFL of the generator with the RM (``refl_study.run_refl``), training seed k, saved
    out/preference/base/           oracle-labelled pairs of base-generator samples + renderer pairs (``preference``)
    out/preference/drift_s<k>/     oracle-labelled pairs of gen_s<k>'s samples (held-out pairs: the "drift" test set)
    out/rm_lr<lr>_steps<n>_batch<b>_seed<s>/ + .json
                                   the RM fine-tuned on all of them (``rdfast.train``; resumes) and its metrics: one
                                   folder per fine-tuning setting, so a sweep shares the data stages

    from rdfast.toyworld import refresh
    report = refresh.run("/tmp/refresh")      # RECIPE: about 45 minutes of one core
    report["after"]["drift_graded_acc"], report["rm"]    # metrics as saved; the fine-tuned RM's folder

The fine-tuned RM is measured before and after on the same sets: renders (``reward_models.datasets``), held-out
base-generator pairs, and held-out pairs of every round-1 generator ("drift", "drift_graded"). The labels come from
the oracle alone, as in deliverable 2; round 1 only decides which images get labelled.
"""
from __future__ import annotations

import os
import sys
import time

from ..errors import InputError
from ..resolve import resolve
from ..testing import tiny_checkpoint
from ..train import TrainConfig, Trainer
from . import preference as pref
from . import refl_study
from . import reward_models as trm
from .data import INSTRUCTION, both_orders

RECIPE = dict(
    round_seeds=(0, 1), refl_steps=600, reference="bottom",  # round 1: toy_alignment's best ReFL recipe
    samples_per_prompt=64, base_pairs=4000, render_pairs=4000, drift_pairs=3000, test_pairs=200,
    steps=1500, lr=1e-4, batch=16, seed=2)  # fine-tuning: about 0.6 epochs of the shipped RM's budget per pass
#: the keys that only the fine-tuning reads; every other key shapes the cached data stages
FINETUNE_KEYS = ("lr", "steps", "batch", "seed")
#: plumbing only (seconds): two ReFL updates, a handful of samples and pairs, two fine-tuning steps
SMOKE = dict(round_seeds=(0,), refl_steps=2, reference="bottom", samples_per_prompt=2, base_pairs=8, render_pairs=8,
             drift_pairs=8, test_pairs=4, steps=2, lr=1e-4, batch=4, seed=2, refl_budget="smoke", data_steps=2,
             render_test_pairs=4)


_read, _write = trm._read, trm._write  # the stage markers' JSON, written atomically


def _data_dir(out, part: str) -> str:
    return os.path.join(out, "preference", part)


def round_one(generator, pairwise, seed: int, folder, recipe: dict, log=sys.stderr) -> dict:
    """ReFL of ``generator`` with ``pairwise`` (training seed ``seed``), the result saved in ``folder``; cached."""
    done = os.fspath(folder) + ".json"
    if not os.path.exists(done):
        budget = {**refl_study.REFL_BUDGETS[recipe.get("refl_budget", "full")], "steps": recipe["refl_steps"],
                  "seed": seed}
        reward = refl_study.pairwise_reward(pairwise, budget, recipe["reference"])
        row = refl_study.run_refl(generator, reward, budget, progress=log is not None, log=log, save_to=folder)
        _write(done, {k: v for k, v in row.items() if k not in ("images", "prompts", "step_rewards")})
    return _read(done)


def data_stage(generator, folder, seed: int, n_pairs: int, n_render_pairs: int, recipe: dict,
               log=sys.stderr) -> pref.PreferenceData:
    """Preference data of ``generator``'s samples (``preference.build``), saved in ``folder``; cached."""
    if not os.path.exists(os.path.join(folder, "pairs.json")):
        data = pref.build(generator, n_pairs, n_render_pairs, seed, log,
                          samples_per_prompt=recipe["samples_per_prompt"],
                          test_samples_per_prompt=max(1, recipe["samples_per_prompt"] // 4),
                          ood_samples_per_prompt=max(1, recipe["samples_per_prompt"] // 4),
                          n_test_pairs=recipe["test_pairs"], steps=recipe.get("data_steps"))
        pref.save(data, folder)
    return pref.load(folder)


def cached_data(out, recipe: dict) -> tuple:
    """(base, [drifted per round-1 seed]) preference data as ``run`` cached them in ``out``."""
    return (pref.load(_data_dir(out, "base")),
            [pref.load(_data_dir(out, f"drift_s{k}")) for k in recipe["round_seeds"]])


def evaluation_sets(base: pref.PreferenceData, drifts: list, render_test_pairs: int = 200) -> dict:
    """The renders' test sets (the shipped RMs', ``render_test_pairs`` each), the base generator's held-out pairs
    and every drifted generator's ("drift", "drift_graded")."""
    sets = trm.datasets({**trm.BUDGETS["long"], "test_pairs": render_test_pairs}, base)
    held = [r for d in drifts for r in d.test_generator]
    for name, kind in (("drift", "aligned"), ("drift_graded", "graded")):
        sets[name] = both_orders([r for r in held if r.extra["kind"] == kind])
    return sets


def rm_folder(out, recipe: dict) -> str:
    """Where the RM fine-tuned with ``recipe``'s ``FINETUNE_KEYS`` lives (its report: the same path + ".json")."""
    return os.path.join(out, "rm_" + "_".join(f"{k}{recipe[k]:g}" for k in FINETUNE_KEYS))


def check(out, recipe: dict, generator="toy:generator", pairwise="toy:pairwise") -> str:
    """Before any heavy work: resolve ``pairwise`` (a bad name fails here) and refuse an ``out`` whose data stages
    were made by another recipe (stages are cached by folder name only, so they would be read back as this one's),
    naming what differs. Records the recipe in ``out/recipe.json``; returns the RM's resolved path."""
    init = resolve(pairwise, tiny_checkpoint, "reward model")
    recipe = {**{k: v for k, v in recipe.items() if k not in FINETUNE_KEYS},
              "round_seeds": list(recipe["round_seeds"]), "generator": generator, "pairwise": pairwise}
    path = os.path.join(out, "recipe.json")
    if os.path.exists(path):
        made = _read(path)
        changed = sorted(k for k in made.keys() | recipe.keys() if made.get(k) != recipe.get(k))
        if changed:
            diff = "; ".join(f"{k}: {made.get(k)!r} there, {recipe.get(k)!r} now" for k in changed)
            raise InputError(f"folder {out} holds stages of another recipe ({diff}); use a fresh folder")
    else:
        os.makedirs(out, exist_ok=True)
        _write(path, recipe)
    return init


def run(out, generator="toy:generator", pairwise="toy:pairwise", recipe: dict | None = None,
        log=sys.stderr) -> dict:
    """The whole recipe (see the module docstring); returns the report (also in ``rm_folder(out, recipe) + ".json"``)."""
    recipe = dict(recipe or RECIPE)
    init = check(out, recipe, generator, pairwise)
    t0 = time.perf_counter()
    rounds = {k: round_one(generator, init, k, os.path.join(out, "round1", f"gen_s{k}"), recipe, log)
              for k in recipe["round_seeds"]}
    base = data_stage(generator, _data_dir(out, "base"), 0, recipe["base_pairs"], recipe["render_pairs"], recipe, log)
    drifts = [data_stage(os.path.join(out, "round1", f"gen_s{k}"), _data_dir(out, f"drift_s{k}"),
                         k + 1, recipe["drift_pairs"], 0, recipe, log) for k in recipe["round_seeds"]]
    sets = evaluation_sets(base, drifts, recipe.get("render_test_pairs", 200))
    train = list(base.train) + [r for d in drifts for r in d.train]
    folder = rm_folder(out, recipe)
    before = os.path.join(out, "before.json")
    if not os.path.exists(before):
        _write(before, trm.measure(init, sets, "pairwise", log))
    if not os.path.exists(os.path.join(folder, "rdfast_config.json")):
        config = TrainConfig(paradigm="pairwise", finetune="full", learning_rate=recipe["lr"],
                             batch_size=recipe["batch"], max_steps=recipe["steps"],
                             warmup_steps=max(1, recipe["steps"] // 20), lr_schedule="cosine",
                             instruction=INSTRUCTION, seed=recipe["seed"], progress=log is not None,
                             max_grad_norm=1.0, save_every=max(1, recipe["steps"] // 4), keep_checkpoints=1)
        Trainer(init, config, train, output_dir=folder, log=log).train(resume="auto")
    report = {"recipe": recipe, "generator": generator, "pairwise": pairwise, "rm": folder,
              "round1": {str(k): v for k, v in rounds.items()},
              "data": {"base": base.info, "drift": [d.info for d in drifts]},
              "train_pairs": len(train),
              "before": _read(before), "after": trm.measure(folder, sets, "pairwise", log),
              "seconds": round(time.perf_counter() - t0, 1)}
    _write(folder + ".json", report)
    return report

