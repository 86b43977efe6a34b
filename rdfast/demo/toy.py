"""``rdfast demo``, the README's main job: the trained toy-world models (rdfast.toyworld) end to end, checked
against the oracle.

For a few prompts (in-domain, and one held-out combination the models never saw), the toy generator
(``toy:generator``, a tiny FLUX pipeline) samples images through rdfast.diffusion's FLUX wrapper and Sampler; the
pointwise verifier (``toy:verifier``) scores each image; the pairwise reward model (``toy:pairwise``) ranks each
prompt's images Best-of-N by pairwise wins (``RewardModel.rank``: the winner is the reference ReFL's pairwise
reward compares against); a short Search over Paths (rdfast.diffusion.search) with the verifier runs per prompt.
The oracle (``rdfast.toyworld.read``) says which images show their prompt, so every reward can be checked.

Outputs in ``out_dir``; a rerun first deletes the files its previous run listed in ``demo.json``, and nothing else:
  demo.png    one row per prompt: its samples in pairwise rank order, then the search's best; each titled with
              its rank, the verifier's reward and the oracle's verdict ("aligned" or what it read), framed green
              (aligned) or red
  demo.jsonl  one row per image: prompt, ood, source ("sample" or "search"), seed, image (path), reward, rank,
              pairwise_wins, p_beats_reference, reading, aligned
  demo.json   the summary (also printed) and the files written
  images/     the images as PNG: what the oracle read and the reward models judged (8-bit, as PIL images, the
              form they were trained on; Search over Paths scores its float candidates, as ReFL does)
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..diffusion.pipelines import load_pipeline
from ..diffusion.pipelines.registry import resolve_pipeline
from ..diffusion.reward import PointwiseReward
from ..diffusion.search import pipeline_problem, search_over_paths
from ..diffusion.testing import torch_threads
from ..errors import InputError
from ..model import RewardModel
from ..resolve import resolve
from ..testing import tiny_checkpoint
from ..toyworld.data import roc_auc
from ..toyworld.figures import Tile, titled_grid
from ..toyworld.generator import SAMPLE_STEPS, sample
from ..toyworld.oracle import as_uint8, read
from ..toyworld.world import SIZE, Prompt

#: in-domain prompts covering every count, colour and shape, where the base generator is right about half the
#: time, and one held-out (OOD) combination
PROMPTS = ("one red circle", "one yellow square", "two red circles", "two green triangles", "three blue triangles",
           "one red triangle")
SEARCH_SEED = 1000  #: search for prompt i draws its noise from SEARCH_SEED + seed + i
MANIFEST_MARK = "rdfast demo"  #: demo.json's "written_by"


def run_toy_demo(out_dir: str = "out/demo", prompts=PROMPTS, samples: int = 8, steps: int = SAMPLE_STEPS,
                 seed: int = 0, pipeline: str = "toy:generator", verifier: str = "toy:verifier",
                 reward: str = "toy:pairwise", search_n: int = 4, search_m: int = 2, progress: bool = True,
                 threads: int = 1) -> dict:
    """Generate, score, rank and search on the toy world; write the picture, the JSONL and the summary.

    Args:
        out_dir: the output folder (created; the demo's own previous outputs in it are replaced).
        prompts: toy-world prompts ("two red circles"; see rdfast.toyworld.prompts).
        samples: images per prompt (seeds ``seed`` .. ``seed + samples - 1``), at least 2 (the ranking needs two).
        steps: sampling steps (the toy generator is measured at 16).
        pipeline, verifier, reward: the generator, the pointwise and the pairwise reward model (any spec that
            load_pipeline / RewardModel.from_pretrained take; toy: names by default).
        search_n, search_m: Search over Paths survivors N and branches M (start at half the steps, re-noise 2
            steps back, denoise 4 forward per round; fewer when ``steps`` is small).
        threads: torch intra-op threads while the demo runs (restored after). The toy models are too small to
            gain from a second thread, which made the demo many times slower on a busy 2-core machine (README).
    Returns:
        The summary (as ``demo.json`` holds it), with "rows": the JSONL rows.
    """
    prompts = _checked(prompts, samples, steps, search_n, search_m, out_dir)
    for flag, spec in (("--pipeline", pipeline), ("--verifier", verifier), ("--reward", reward)):
        try:  # every spec resolved before anything loads (one clear error)
            resolve_pipeline(spec) if flag == "--pipeline" else resolve(spec, tiny_checkpoint, "reward model")
        except InputError as err:
            raise InputError(f"{flag}: {err}") from err
    seeds = [seed + k for k in range(samples)]
    search_plan = dict(n=search_n, m=search_m, start_step=max(1, steps // 2), delta_f=min(2, max(1, steps // 2)))
    search_plan["delta_b"] = search_plan["delta_f"] + 2
    files = [_image_name(p, f"seed{s}") for p in prompts for s in seeds] + [_image_name(p, "search") for p in prompts]
    files += ["demo.png", "demo.jsonl"]
    _replace_previous(out_dir, files)
    with torch_threads(threads):
        summary, rows = _run(out_dir, prompts, samples, steps, seed, seeds, pipeline, verifier, reward, search_plan,
                             progress)
    summary.update(written_by=MANIFEST_MARK, settings=dict(prompts=[str(p) for p in prompts], samples=samples, steps=steps, seed=seed,
                                 pipeline=pipeline, verifier=verifier, reward=reward), files=files, complete=True)
    with open(os.path.join(out_dir, "demo.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    for line in summary_lines(summary):
        print(line)
    print(f"wrote {out_dir}/demo.png, demo.jsonl ({len(rows)} rows), demo.json and images/")
    return {**summary, "rows": rows}


def _run(out_dir, prompts, samples, steps, seed, seeds, pipeline, verifier, reward, search_plan, progress):
    """The demo's work: load, sample, score, rank, search; write the images, the picture and the JSONL.
    Returns (the summary, the rows)."""
    pipe = load_pipeline(pipeline, device="cpu")
    verifier_rm = RewardModel.from_pretrained(verifier, device="cpu")
    pairwise = RewardModel.from_pretrained(reward, device="cpu")
    print(f"generator {pipeline}, verifier {verifier}, pairwise {reward}: {len(prompts)} prompts x {samples} "
          f"samples, {steps} steps")

    rows, tiles = [], {p: [] for p in prompts}
    for p in tqdm(prompts, desc="sample, score, rank", unit="prompt", disable=not progress):
        pixels = [as_uint8(image) for image in sample(pipe, [p] * samples, seeds, steps=steps)]
        # scored and ranked as the 8-bit PIL images the reward models were trained on and the PNGs hold
        pictures = [Image.fromarray(x) for x in pixels]
        rewards = verifier_rm.score(images=pictures, prompts=[p.text] * samples).tolist()
        ranked = pairwise.rank(candidates=pictures, prompt=p.text, top_k=1)
        best = ranked.order[0]
        drawn = []
        for k, s in enumerate(seeds):
            row = _row(out_dir, p, "sample", s, pictures[k], rewards[k], _image_name(p, f"seed{s}"))
            row.update(rank=ranked.order.index(k) + 1, pairwise_wins=int(ranked.wins[k]),
                       p_beats_reference=None if k == best else float(ranked.win_prob[k, best]))
            rows.append(row)
            drawn.append(_tile(row, pixels[k], f"#{row['rank']}   reward {row['reward']:.2f}"))
        tiles[p] = [drawn[k] for k in ranked.order]

    pointwise = PointwiseReward(verifier_rm, checkpoint=False)  # search scores float tensors, as ReFL does
    for i, p in enumerate(tqdm(prompts, desc="search over paths", unit="prompt", disable=not progress)):
        problem = pipeline_problem(pipe, p.text, steps, SIZE, SIZE, graphs=False)
        found = search_over_paths(problem, pointwise, **search_plan, progress=False,
                                  generator=torch.Generator().manual_seed(SEARCH_SEED + seed + i))
        pixels = as_uint8(found.best_image)
        picture = Image.fromarray(pixels)
        score = float(verifier_rm.score(images=[picture], prompts=[p.text])[0])  # as the samples were scored
        row = _row(out_dir, p, "search", SEARCH_SEED + seed + i, picture, score, _image_name(p, "search"))
        row.update(rank=None, pairwise_wins=None, p_beats_reference=None, denoiser_calls=found.nfe["denoiser"],
                   verifier_calls=found.nfe["verifier"])
        rows.append(row)
        tiles[p].append(_tile(row, pixels, f"search   reward {score:.2f}"))

    aligned = {p: sum(r["aligned"] for r in rows if r["prompt"] == p.text and r["source"] == "sample") for p in prompts}
    grid = [(f"{p.text}{' (held out: never in training)' if p.ood else ''}: {aligned[p]} of {samples} samples aligned, in "
             "pairwise rank order; last: the search's best", tiles[p]) for p in prompts]
    titled_grid(grid, os.path.join(out_dir, "demo.png"), cell_width=156)
    with open(os.path.join(out_dir, "demo.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return summarize(rows, search_plan, sample_calls={"denoiser": samples * steps, "verifier": samples}), rows


def _checked(prompts, samples, steps, search_n, search_m, out_dir) -> list[Prompt]:
    """The prompts as Prompts; every argument checked before anything loads (InputError naming it)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        parsed = list(dict.fromkeys(Prompt.parse(p) for p in prompts))
    except ValueError as err:
        raise InputError(f"--prompt: {err}") from None
    if not parsed:
        raise InputError("--prompt: give at least one prompt")
    for flag, value, low in (("--samples", samples, 2), ("--steps", steps, 2), ("search n", search_n, 1),
                             ("search m", search_m, 1)):
        if not isinstance(value, int) or value < low:
            raise InputError(f"{flag} must be an integer of at least {low}, got {value!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out {out_dir!r} is a file, not a folder")
    return parsed


def _image_name(prompt: Prompt, what: str) -> str:
    return f"images/{prompt.text.replace(' ', '_')}_{what}.png"


def _replace_previous(out_dir: str, files: list[str]) -> None:
    """Delete what the previous run listed in demo.json (inside ``out_dir`` only), then list ``files`` there
    first, so that a run stopped half way is still cleaned up by the next."""
    manifest = os.path.join(out_dir, "demo.json")
    previous = []
    if os.path.isfile(manifest):
        try:
            with open(manifest) as fh:
                saved = json.load(fh)
            if saved.get("written_by") == MANIFEST_MARK:  # only a manifest this demo wrote names files to delete
                previous = [f for f in saved.get("files", []) if isinstance(f, str)]
        except (OSError, ValueError, AttributeError):
            previous = []  # not ours, or damaged: delete nothing
    for name in previous:
        path = os.path.normpath(os.path.join(out_dir, name))
        inside = not os.path.isabs(name) and not path.startswith(os.pardir) and \
            os.path.commonpath([os.path.abspath(out_dir), os.path.abspath(path)]) == os.path.abspath(out_dir)
        if inside and os.path.isfile(path):
            os.remove(path)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    with open(manifest, "w") as fh:
        json.dump({"written_by": MANIFEST_MARK, "files": files, "complete": False}, fh)


def _row(out_dir, prompt: Prompt, source: str, seed: int, picture: Image.Image, reward: float, name: str) -> dict:
    """Save ``picture`` as ``name``; its JSONL row, with the oracle's verdict on it."""
    picture.save(os.path.join(out_dir, name))
    reading = read(picture)
    return {"prompt": prompt.text, "ood": prompt.ood, "source": source, "seed": seed, "image": name,
            "reward": float(reward), "reading": reading.text, "aligned": reading.matches(prompt)}


def _tile(row: dict, pixels: np.ndarray, title: str) -> Tile:
    verdict = "aligned" if row["aligned"] else f"read: {row['reading']}"
    return Tile(pixels, [title, verdict], row["aligned"])


def summarize(rows: list[dict], search_plan: dict, sample_calls: dict) -> dict:
    """What the demo shows, from its JSONL rows: the verifier's mean reward on aligned vs misaligned samples (and
    ROC-AUC) per split, how often each selection picks an aligned image, and the search's results."""
    samples = [r for r in rows if r["source"] == "sample"]
    out = {"splits": {}}
    for split, keep in (("in_domain", lambda r: not r["ood"]), ("ood", lambda r: r["ood"]), ("all", lambda r: True)):
        chosen = [r for r in samples if keep(r)]
        if not chosen:
            continue
        good = [r["reward"] for r in chosen if r["aligned"]]
        bad = [r["reward"] for r in chosen if not r["aligned"]]
        out["splits"][split] = {
            "images": len(chosen), "aligned": len(good),
            "mean_reward_aligned": float(np.mean(good)) if good else None,
            "mean_reward_misaligned": float(np.mean(bad)) if bad else None,
            "roc_auc": roc_auc([r["reward"] for r in chosen], [r["aligned"] for r in chosen]) if good and bad else None}
    by_prompt = {}
    for r in samples:
        by_prompt.setdefault(r["prompt"], []).append(r)
    out["prompts"] = []
    for prompt, group in by_prompt.items():
        top_reward = max(group, key=lambda r: r["reward"])
        [search] = [r for r in rows if r["source"] == "search" and r["prompt"] == prompt] or [None]
        out["prompts"].append({
            "prompt": prompt, "ood": group[0]["ood"], "aligned": sum(r["aligned"] for r in group), "samples": len(group),
            "verifier_pick_aligned": top_reward["aligned"],
            "pairwise_pick_aligned": next(r["aligned"] for r in group if r["rank"] == 1),
            "search_aligned": None if search is None else search["aligned"],
            "search_reward": None if search is None else search["reward"]})
    searches = [r for r in rows if r["source"] == "search"]
    out["search"] = {**search_plan, "denoiser_calls": searches[0]["denoiser_calls"] if searches else 0,
                     "verifier_calls": searches[0]["verifier_calls"] if searches else 0}
    out["sample_calls"] = sample_calls  # per prompt, for the samples the verifier and the pairwise RM pick from
    return out


def _mean(x):
    return "n/a" if x is None else f"{x:.2f}"


def summary_lines(summary: dict) -> list[str]:
    """The printed summary: a few lines a reader can check against the picture."""
    lines = []
    names = {"in_domain": "in-domain", "ood": "held-out", "all": "all"}
    for split, s in summary["splits"].items():
        auc = "" if s["roc_auc"] is None else f", ROC-AUC {s['roc_auc']:.2f}"
        lines.append(f"{names[split]:9s}: {s['aligned']:2d} of {s['images']:2d} samples aligned (oracle); verifier "
                     f"mean reward aligned {_mean(s['mean_reward_aligned'])} vs misaligned "
                     f"{_mean(s['mean_reward_misaligned'])}{auc}")
    prompts = summary["prompts"]
    n = len(prompts)
    base = sum(p["aligned"] for p in prompts) / max(1, sum(p["samples"] for p in prompts))
    k = prompts[0]["samples"] if prompts else 0
    sp = summary["search"]
    lines.append(f"aligned picks per prompt: a random sample {base:.2f}; Best-of-{k} by the verifier "
                 f"{sum(p['verifier_pick_aligned'] for p in prompts)}/{n}; by the pairwise rank "
                 f"{sum(p['pairwise_pick_aligned'] for p in prompts)}/{n}; search over paths "
                 f"{sum(bool(p['search_aligned']) for p in prompts)}/{n} (N={sp['n']}, M={sp['m']}: "
                 f"{sp['denoiser_calls']} denoiser + {sp['verifier_calls']} verifier calls per prompt; the "
                 f"{k} samples: {summary['sample_calls']['denoiser']} + {summary['sample_calls']['verifier']})")
    for p in prompts:
        lines.append(f"  {p['prompt']:22s}{' (held out)' if p['ood'] else '           '} aligned {p['aligned']}/"
                     f"{p['samples']}, picks: verifier {'yes' if p['verifier_pick_aligned'] else 'no '}, pairwise "
                     f"{'yes' if p['pairwise_pick_aligned'] else 'no '}, search "
                     f"{'yes' if p['search_aligned'] else 'no '} (reward {_mean(p['search_reward'])})")
    return lines
