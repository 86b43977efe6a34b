"""Shared helpers of the training tests: preference records over random images, seeds from a generator."""
import torch

from rdfast.testing import random_images
from rdfast.train import PreferenceRecord


def records(n, seed, reasons=False):
    ims = random_images(2 * n, sizes=((56, 56), (84, 56), (56, 84)), seed=seed)
    words = ["red", "blue", "green", "dark", "bright"]
    return [PreferenceRecord(f"a {words[k % 5]} house and a {words[(k * 3) % 5]} tree", ims[2 * k], ims[2 * k + 1],
                             [2, 1, "tie"][k % 3], reason=f"image {1 + k % 2} has the tree" if reasons else None,
                             instruction=["alignment", None][k % 2], line=k + 1) for k in range(n)]


def seed_of(gen):
    return int(torch.randint(0, 10_000, (1,), generator=gen))
