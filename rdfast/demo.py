"""The README's main job on the embedded default: a tiny randomly initialised VLM built locally.

Writes a small JSONL of images and prompts, scores it with ``rdfast score`` and ``rdfast compare`` (the
same code the CLI runs on real checkpoints), ranks candidates Best-of-N, and saves a picture of the result.
The tiny model is untrained, so its scores are arbitrary; the job shows the pipeline end to end.
"""
from __future__ import annotations

import json
import os

from .model import RewardModel
from .score_jsonl import score_file
from .testing import random_images, tiny_checkpoint

PROMPTS = ["a red circle on a white background", "two blue squares", "a green triangle"]


def run_demo(out_dir: str = "out/demo", family: str = "qwen2_vl") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    path = tiny_checkpoint(family)
    rm = RewardModel.from_pretrained(path, device="cpu")
    print(f"model: {family} tiny checkpoint at {path}; yes id {rm.yes_token_id}, no id {rm.no_token_id}")

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
