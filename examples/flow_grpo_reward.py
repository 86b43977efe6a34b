"""An rdfast server as a Flow-GRPO reward: ``fn(images, prompts, metadata) -> (scores, info)``.

    rdfast serve --model tiny:qwen2_vl --port 8000 &
    python examples/flow_grpo_reward.py --url http://127.0.0.1:8000

In Flow-GRPO itself, register it beside its own rewards (flow_grpo/rewards.py) and name it in the config:

    from rdfast.integrations import flow_grpo
    score_functions["rdfast"] = lambda device: flow_grpo("http://127.0.0.1:8000")

The images here are what Flow-GRPO's sampler hands its rewards: a float tensor [N, 3, H, W] in [0, 1].
"""
import argparse
import json

import torch

from rdfast.integrations import flow_grpo


def demo_batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    """A float batch [n, 3, 48, 48] in [0, 1] (stand-ins for decoded samples)."""
    return torch.rand(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    reward = flow_grpo(args.url)
    images = demo_batch(4, args.seed)
    prompts = ["a cat", "a dog", "a red car", "a lighthouse at dusk"]
    scores, info = reward(images, prompts, [{} for _ in prompts])
    print(json.dumps({"scores": scores.tolist(), "info": info}))
    return scores.tolist()


if __name__ == "__main__":
    main()
