"""Qwen3.5's hybrid shared prefix on another transformers version (CPU): run with that version's python.

    python -m venv /tmp/tf517 && echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/tf517/lib/python3.11/site-packages/main.pth
    /tmp/tf517/bin/pip install --no-deps transformers==5.17.0 "huggingface-hub>=1.5,<2"
    RDFAST_CACHE=/tmp/tiny517 /tmp/tf517/bin/python scripts/check_hybrid_prefix.py

Checks, on tiny:qwen3_5 and tiny:qwen3_5_moe built by that version: every batching with shared prefixes (length, padded, varlen's
length fallback; a one-token suffix too) equals the plain padded forward within 1e-5 in log P, and a family that
drops the linear layers' recurrent state in ``expand_cache`` is off by more than 1e-3. Passing here is what lets
a version into ``rdfast.families.qwen3_5.HYBRID_PREFIX_TESTED``. Prints the largest difference; exits non-zero
on failure. (The image processor is built directly: AutoImageProcessor in 5.17 asks for torchvision.)
"""
import pathlib
import sys

import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import rdfast.images  # noqa: E402
from rdfast import prompts  # noqa: E402
from rdfast.engine import EngineOptions  # noqa: E402
from rdfast.families import family_for  # noqa: E402
from rdfast.families.qwen3_5 import Qwen3_5Family  # noqa: E402
from rdfast.model import RewardModel  # noqa: E402
from rdfast.testing import random_images, tiny_checkpoint  # noqa: E402


class DropsRecurrentState(Qwen3_5Family):
    def expand_cache(self, cache, batch_size, text_config):
        out = super().expand_cache(cache, batch_size, text_config)
        for layer in self.linear_layers:
            states = out.layers[layer].recurrent_states
            states[0] = torch.zeros_like(states[0])
        return out


def logprobs(rm, items, **options):
    saved, rm.options = rm.options, EngineOptions(**options)
    try:
        with torch.inference_mode():
            return rm.item_logprobs(items)
    finally:
        rm.options = saved


def main() -> None:
    # 5.17's convert_to_rgb has no return_numpy (rdfast/images.py calls 5.24's); the random test images are RGB
    rdfast.images.to_rgb = lambda image, index=None, field=None: image.convert("RGB")
    print("transformers", transformers.__version__)
    for name in ("qwen3_5", "qwen3_5_moe"):
        check(name)


def check(name: str) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = tiny_checkpoint(name)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    family = family_for(model.config, tokenizer, processor)
    answers = prompts.resolve_answer_tokens(tokenizer, family.image_placeholder, ("yes", "no"),
                                            family.chat_template_kwargs)
    rm = RewardModel(model, tokenizer, family, answers)
    buggy = RewardModel(model, tokenizer, DropsRecurrentState(model.config, tokenizer, processor), answers)
    worst = 0.0
    for seed in range(3):
        refs = random_images(2, sizes=((64, 64), (96, 64)), seed=seed)
        cands = random_images(4, sizes=((64, 64), (96, 64), (64, 96), (128, 96)), seed=seed + 10)
        items = rm.encode(["a red circle"] * 4 + ["two blue squares"] * 2,
                          [[refs[0]] * 4 + [refs[1]] * 2, cands + cands[:2]])
        plain = logprobs(rm, items, feature_cache=False, prefix_cache=False, batching="padded")
        for batching in ("length", "padded", "varlen"):
            rm.engine.stats.clear()
            worst = max(worst, (logprobs(rm, items, batching=batching, batch_size=3) - plain).abs().max().item())
            assert rm.engine.stats["prefix_tokens"] > 0, "no prefix was shared"
        dropped = (logprobs(buggy, items, batch_size=3) - plain).abs().max().item()
        assert dropped > 1e-3, f"dropping the recurrent state went unnoticed ({dropped:.1e})"
        twins = rm.encode(["a red circle"] * 2, [[refs[0]] * 2])  # one-token suffixes
        plain = logprobs(rm, twins, feature_cache=False, prefix_cache=False, batching="padded")
        worst = max(worst, (logprobs(rm, twins, batch_size=1) - plain).abs().max().item())
    print(f"{name}: largest |shared - plain| in log P: {worst:.2e} (allowed 1e-5)")
    assert worst < 1e-5


if __name__ == "__main__":
    main()
