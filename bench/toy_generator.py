"""The toy generator's oracle alignment as loaded (issue 13): all in-domain prompts x fixed seeds, through
rdfast.diffusion's FLUX wrapper and sampler, with a picture of the samples and the oracle's verdicts.

    python bench/toy_generator.py --pipeline toy:generator --json bench/results/toy_generator_cpu.json \
        --grid bench/results/toy_generator_samples.png
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from common import load_average, machine, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rdfast import toyworld as tw  # noqa: E402
from rdfast.diffusion.pipelines import load_pipeline  # noqa: E402
from rdfast.toyworld.figures import verdict_grid  # noqa: E402
from rdfast.toyworld.generator import SAMPLE_STEPS, sample  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="toy:generator")
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 per in-domain prompt")
    parser.add_argument("--steps", type=int, default=SAMPLE_STEPS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", required=True)
    parser.add_argument("--grid", help="PNG of the samples (first two seeds) with the oracle's verdicts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline, device="cpu")
    seeds = list(range(args.seeds))
    pool = [p for p in tw.prompts("in_domain") for _ in seeds]
    start = time.perf_counter()
    images = sample(pipe, pool, seeds * len(tw.prompts("in_domain")), args.steps)
    seconds = time.perf_counter() - start
    readings = [tw.read(i) for i in images]
    per_attribute = {a: sum(getattr(r, a) == getattr(p, a) for r, p in zip(readings, pool)) / len(pool)
                     for a in tw.ATTRIBUTES}
    result = {"pipeline": args.pipeline, "alignment": sum(r.matches(p) for r, p in zip(readings, pool)) / len(pool),
              "attribute_accuracy": per_attribute, "samples": len(pool), "seeds": seeds, "steps": args.steps,
              "sample_seconds": round(seconds, 1), "machine": machine(), "load": load_average(),
              "torch": torch.__version__}
    write_json(args.json, result)
    if args.grid:
        first = [k for k in range(len(pool)) if k % len(seeds) < 2]
        verdict_grid([images[k] for k in first], [pool[k] for k in first], args.grid, columns=9)
    print(f"{args.pipeline}: alignment {result['alignment']:.3f} over {len(pool)} samples "
          f"({per_attribute}), {seconds:.0f} s, load {result['load']}")
    return result


if __name__ == "__main__":
    main()
