"""Score, rank and group images with a reward model served by ``rdfast serve``, from a process without the model.

    rdfast serve --model tiny:qwen2_vl --port 8000 &
    python examples/remote_client.py --url http://127.0.0.1:8000 [--images a.png b.png ...]

Prints one JSON object: the pointwise scores, the Best-of-N order, and a GRPO group scored against its own
Best-of-N with the group's telemetry.
"""
import argparse
import json

import numpy as np
from PIL import Image

import rdfast


def demo_images(n: int = 4, seed: int = 0) -> list:
    """n random 48x48 RGB images (stand-ins for a generator's samples)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--prompt", default="a red fox in the snow")
    p.add_argument("--images", nargs="*", help="image files (default: 4 random demo images)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    images = [Image.open(path) for path in args.images] if args.images else demo_images(4, args.seed)
    rm = rdfast.RemoteRewardModel(args.url, api_key=args.api_key)
    scores = rm.score(images=images, prompts=[args.prompt] * len(images))
    ranked = rm.rank(candidates=images, prompt=args.prompt, top_k=1)
    group = rm.group(candidates=images, prompt=args.prompt, reference_mode="best_of_n")
    result = {"scores": scores.tolist(), "order": ranked.order, "group_scores": group.scores.tolist(),
              "group_mean": group.mean, "group_std": group.std, "saturated_fraction": group.saturated_fraction}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
