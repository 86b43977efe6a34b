"""``rdfast demo --model M``: one reward model on random images, through the CLI's own scoring job.

Writes a small JSONL of images and prompts, scores it with ``rdfast score`` and ``rdfast compare`` (the
same code the CLI runs on real checkpoints), ranks candidates Best-of-N, and saves a picture of the result.
With ``tiny:FAMILY`` (a tiny randomly initialised VLM built locally) the scores are arbitrary; the job shows
the pipeline end to end. The README's main job, on trained models, is ``rdfast.demo.toy``.
"""
from __future__ import annotations

import json
import os

from ..model import RewardModel
from ..score_jsonl import score_file
from ..testing import random_images

PROMPTS = ["a red circle on a white background", "two blue squares", "a green triangle"]


def run_scoring_demo(out_dir: str = "out/demo", model: str = "tiny:qwen2_vl") -> dict:
    """Score, compare and rank random images with the reward model ``model`` (any spec RewardModel.from_pretrained
    takes); writes images, JSONL inputs and outputs and ``scores.png`` to ``out_dir``, replacing its own files.

    Returns:
        {"scores": the pointwise P(yes) of the six images, "rank": the Best-of-4 order of the first four}.
    """
    os.makedirs(out_dir, exist_ok=True)
    rm = RewardModel.from_pretrained(model, device="cpu")
    print(f"model: {model}; yes id {rm.yes_token_id}, no id {rm.no_token_id}")

    images = random_images(6, seed=0, kind="pil")
    names = []
    for k, image in enumerate(images):
        names.append(f"image{k}.png")
        image.save(os.path.join(out_dir, names[-1]))
    with open(os.path.join(out_dir, "items.jsonl"), "w") as fh:
        for k, name in enumerate(names):
            fh.write(json.dumps({"prompt": PROMPTS[k % len(PROMPTS)], "image": name}) + "\n")
        fh.write(json.dumps({"prompt": "a missing file", "image": "nowhere.png"}) + "\n")  # reported, skipped
    with open(os.path.join(out_dir, "pairs.jsonl"), "w") as fh:
        for k in range(1, len(names)):
            fh.write(json.dumps({"prompt": PROMPTS[k % len(PROMPTS)], "image1": names[0], "image2": names[k]}) + "\n")

    score_file(rm, "score", os.path.join(out_dir, "items.jsonl"), os.path.join(out_dir, "scores.jsonl"),
               overwrite=True)  # the demo owns its outputs
    score_file(rm, "compare", os.path.join(out_dir, "pairs.jsonl"), os.path.join(out_dir, "pair_scores.jsonl"),
               debias=True, overwrite=True)
    ranking = rm.rank(candidates=images[:4], prompt=PROMPTS[0], top_k=2)

    scores = [json.loads(line)["score"] for line in open(os.path.join(out_dir, "scores.jsonl"))]
    print("\npointwise P(yes):")
    for name, s in zip(names, scores):
        print(f"  {name:12s} {s:.6f}")
    print("\npairwise P(image 2 better than image0.png), debiased:")
    for line in open(os.path.join(out_dir, "pair_scores.jsonl")):
        r = json.loads(line)
        print(f"  {r['image2']:12s} {r['p_image2_better']:.6f}")
    print(f"\nBest-of-4 for {PROMPTS[0]!r}: order {ranking.order}, wins {ranking.wins.tolist()}")
    picture = save_grid(images, scores, names, os.path.join(out_dir, "scores.png"))
    print(f"\nresults in {out_dir}/ (scores.jsonl, pair_scores.jsonl, {os.path.basename(picture)})")
    return {"scores": scores, "rank": ranking.order}


def save_grid(images, scores, names, path: str) -> str:
    """An image grid titled with each image's score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2.3))
    for ax, image, score, name in zip(axes, images, scores, names):
        ax.imshow(image)
        ax.set_title(f"{name}\nP(yes)={score:.4g}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
