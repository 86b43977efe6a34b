"""An rdfast server as a verl-omni visual reward (``rdfast.integrations.verl_omni.compute_score``).

    rdfast serve --model tiny:qwen2_vl --port 8000 &
    python examples/verl_omni_reward.py --url http://127.0.0.1:8000

In a verl-omni run, point a reward function at it; the extra key reaches the scorer as a keyword:

    reward.reward_functions.rdfast.path=pkg://rdfast.integrations.verl_omni
    reward.reward_functions.rdfast.name=compute_score
    reward.reward_functions.rdfast.server_url=http://127.0.0.1:8000

This script calls the scorer as verl-omni's reward manager does: by keyword, one generated image per call (a
uint8 tensor [3, H, W]), the prompt as ``ground_truth``, many calls awaited at once (the server batches them).
"""
import argparse
import asyncio
import json

import torch

from rdfast.integrations.verl_omni import compute_score


def demo_images(n: int = 4, seed: int = 0) -> list:
    """n uint8 images [3, 40, 40] (stand-ins for a rollout's outputs)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 40, 40), generator=g, dtype=torch.uint8) for _ in range(n)]


async def score_all(url: str, images: list, prompts: list) -> list:
    calls = [compute_score(data_source="t2i", solution_image=image, ground_truth=prompt, extra_info={},
                           server_url=url) for image, prompt in zip(images, prompts)]
    return await asyncio.gather(*calls)


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    prompts = ["a cat", "a dog", "a red car", "a lighthouse at dusk"]
    results = asyncio.run(score_all(args.url, demo_images(4, args.seed), prompts))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
