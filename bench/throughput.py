"""Scoring throughput: rdfast's engine against plain transformers, measured in one run on one model.

    python bench/throughput.py                       # --preset tiny (the embedded model), under 2 minutes
    python bench/throughput.py --preset small        # random 150k-vocab model, 224 px images: CPU-meaningful
    python bench/throughput.py --preset qwen2.5-vl-3b --json out.json   # real shapes, random weights (GPU)
    python bench/throughput.py --preset qwen3.5-small                 # also qwen3-vl-small; GPU: qwen3-vl-8b, qwen3.5-9b
    python bench/throughput.py --model /ckpts/Qwen2-VL-2B-Instruct      # a real checkpoint

Scenarios: ref16 (16 candidates against 1 reference per prompt, 8 prompts, pairwise), rank8 (all 56 ordered
pairs of 8 candidates per prompt), point64 (64 images pointwise, 8 prompts), video16 (16 candidate clips
against 1 reference clip per prompt, 4 prompts), checklist (16 images x 12 questions, pointwise: ``rm.ask``;
also timed end to end, from PIL images, against one ``rm.score`` call per pair: speedup_vs_separate_calls).
Baselines on the same inputs (bench/baselines.py): naive (one sequence at a time with full-sequence logits,
as public scorers do; timed on a subset, reported per pair), hf_batched (padded batches of 16 through the model's
forward with logits_to_keep=1) and hf_expert (distinct media encoded once, 2-D head call), timed stock and
matched (rdfast's GEMM path and thread policy); the headline hf_expert figure is the faster of the two.
work_ratio: FLOPs each baseline computes (padding included) over rdfast's. fraction_of_roofline: rdfast's FLOPs
at the peak GEMM rate measured in this run (bench/roofline.py; dtype and rdfast's thread count) over rdfast's
time. --dtype float32|bfloat16; --contention N runs N busy-loop co-runners throughout (bench/contention.py).
All timings start from preprocessed inputs. Prints a table; --json writes the figures in bench/common.py's
schema; rows are appended to bench/results/throughput.csv. --smoke: seconds, for CI.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import torch
from contention import co_runners
from roofline import peak

from common import append_csv, environment, flat_rows, gpu_peaks, load_average, machine, write_json

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from baselines import baseline_models, run_hf_batched, run_hf_expert, run_naive, takes_encoder_outputs  # noqa: E402

from rdfast.cpu_threads import scoring_threads  # noqa: E402
from rdfast.engine import BATCHING, prefix_groups, sharing_keys  # noqa: E402

LONG_INSTRUCTION = (
    "You are an expert judge of generated images. Judge text-image alignment first: every object named in "
    "the text description must be present, with the right colour, shape, count and position relative to "
    "the other objects. Then judge visual quality: sharp edges, clean colours, no artifacts, no distorted "
    "shapes. Prefer the image that satisfies more of the description; break ties by visual quality."
)
PROMPT_WORDS = ["red", "blue", "green", "yellow", "circle", "square", "triangle", "two", "three", "above", "below"]


@dataclass
class Preset:
    family: str
    overrides: dict = field(default_factory=dict)
    image_size: tuple = (56, 56)  # (width, height)
    instruction: str | None = None
    prompt_words: int = 6
    naive_subset: int = 8
    repeats: int = 3
    video_frames: int = 4
    gpu_only: bool = False  # billions of random weights: refused on CPU (bench/gpu_check.sh builds them on the GPU)


PRESETS = {
    "tiny": Preset("qwen2_vl"),
    # Tens of millions of parameters, Qwen2 vocabulary, 224 px images (64 image tokens each).
    "small": Preset(
        "qwen2_vl",
        dict(
            text_config=dict(vocab_size=152064, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
            vision_config=dict(depth=4, embed_dim=128, hidden_size=256, mlp_ratio=4, num_heads=4),
            image_processor=dict(max_pixels=224 * 224),
        ),
        image_size=(224, 224), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=6, repeats=2,
    ),
    # Real architectures' shapes with random weights: for GPU runs.
    "qwen2.5-vl-3b": Preset(
        "qwen2_5_vl",
        dict(
            text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                             num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                               fullatt_block_indexes=[7, 15, 23, 31], window_size=112),
            image_processor=dict(max_pixels=448 * 448),
        ),
        image_size=(448, 448), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=8, repeats=3,
    ),
    # CPU-sized Qwen3-VL and Qwen3.5 (real vocabularies and patch/merge layout, small layers), 224 px images
    # (49 image tokens each): what bench/test_bench_throughput.py smoke-runs for the newer families.
    "qwen3-vl-small": Preset(
        "qwen3_vl",
        dict(
            text_config=dict(vocab_size=151936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                             rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [12, 10, 10],
                                              "mrope_interleaved": True}),
            vision_config=dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=256,
                               num_position_embeddings=2304, deepstack_visual_indexes=[0, 1, 2]),
            image_processor=dict(size=dict(longest_edge=224 * 224)),
        ),
        image_size=(224, 224), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=6, repeats=2,
    ),
    "qwen3.5-small": Preset(
        "qwen3_5",
        dict(
            text_config=dict(vocab_size=248320, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                             layer_types=["linear_attention"] * 3 + ["full_attention"], linear_key_head_dim=32,
                             linear_value_head_dim=32, linear_num_key_heads=4, linear_num_value_heads=8,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_section": [3, 3, 2],
                                              "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
            vision_config=dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=256,
                               num_position_embeddings=2304),
            image_processor=dict(size=dict(longest_edge=224 * 224)),
        ),
        image_size=(224, 224), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=6, repeats=2,
    ),
    # Shapes from the public config.json of Qwen/Qwen3-VL-8B-Instruct (text: 36 layers, hidden 4096, MLP 12288,
    # 32 heads / 8 KV of 128, interleaved mrope [24, 20, 20], theta 5e6; vision: 27 blocks of 1152, MLP 4304,
    # 16 heads, out 4096, deepstack after blocks 8, 16, 24) and Qwen/Qwen3.5-9B (text: 32 layers, 3 Gated DeltaNet
    # then 1 full attention, hidden 4096, MLP 12288, 16 heads / 4 KV of 256 with a quarter rotary, mrope
    # [11, 11, 10], theta 1e7, linear attention 16 key / 32 value heads of 128, conv 4; vocab 248320; vision as
    # Qwen3-VL's without deepstack), as quoted from those files in public repositories (Cosmos-Reason2-8B's,
    # built on Qwen3-VL-8B; Qwen3.5 ports' config tables), checked against each other. GPU only.
    "qwen3-vl-8b": Preset(
        "qwen3_vl",
        dict(
            text_config=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                             max_position_embeddings=262144,
                             rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                              "mrope_interleaved": True}),
            vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                               num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
            image_processor=dict(size=dict(longest_edge=448 * 448)),
        ),
        image_size=(448, 448), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=8, repeats=3, gpu_only=True,
    ),
    "qwen3.5-9b": Preset(
        "qwen3_5",
        dict(
            text_config=dict(vocab_size=248320, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
                             num_attention_heads=16, num_key_value_heads=4, head_dim=256,
                             max_position_embeddings=262144,
                             layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 8, linear_conv_kernel_dim=4,
                             linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                             linear_num_value_heads=32,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_section": [11, 11, 10],
                                              "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
            vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                               num_position_embeddings=2304),
            image_processor=dict(size=dict(longest_edge=448 * 448)),
        ),
        image_size=(448, 448), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=8, repeats=3, gpu_only=True,
    ),
    "internvl3-1b": Preset(
        "internvl",
        dict(
            text_config=dict(vocab_size=151674, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768),
            vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                               image_size=448, patch_size=14),
        ),
        image_size=(448, 448), instruction=LONG_INSTRUCTION, prompt_words=12, naive_subset=8, repeats=3,
    ),
}


# ---- workloads --------------------------------------------------------------------------------------------
def make_prompts(n: int, words: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(PROMPT_WORDS[int(k)] for k in torch.randint(0, len(PROMPT_WORDS), (words,), generator=g)) for _ in range(n)]


def scenario_inputs(name: str, preset: Preset, seed: int = 0) -> dict:
    """Image/prompt lists of a scenario: {"images1", "images2" or None, "prompts"}."""
    from rdfast.testing import random_images

    size = (preset.image_size,)
    if name == "ref16":
        refs = random_images(8, sizes=size, seed=seed)
        cands = random_images(128, sizes=size, seed=seed + 1)
        prompts = make_prompts(8, preset.prompt_words, seed)
        return {"images1": [refs[k // 16] for k in range(128)], "images2": cands, "prompts": [prompts[k // 16] for k in range(128)]}
    if name == "rank8":
        n_prompts = 2
        cands = random_images(8 * n_prompts, sizes=size, seed=seed)
        prompts = make_prompts(n_prompts, preset.prompt_words, seed)
        pairs = [(p, i, j) for p in range(n_prompts) for i in range(8) for j in range(8) if i != j]
        return {"images1": [cands[8 * p + i] for p, i, _ in pairs], "images2": [cands[8 * p + j] for p, _, j in pairs],
                "prompts": [prompts[p] for p, _, _ in pairs]}
    if name == "video16":  # 16 candidate clips against 1 reference clip per prompt, 4 prompts
        g = torch.Generator().manual_seed(seed)
        w, h = preset.image_size
        clips = [torch.rand(preset.video_frames, 3, h, w, generator=g) for _ in range(4 + 64)]
        prompts = make_prompts(4, preset.prompt_words, seed)
        return {"images1": [clips[k // 16] for k in range(64)], "images2": clips[4:], "kind": "video",
                "prompts": [prompts[k // 16] for k in range(64)]}
    if name == "checklist":  # 16 images, each asked the same 12 questions
        images = random_images(16, sizes=size, seed=seed)
        questions = make_prompts(12, preset.prompt_words, seed)
        return {"images1": [images[k // 12] for k in range(192)], "images2": None,
                "prompts": [questions[k % 12] for k in range(192)], "checklist": (images, questions)}
    if name == "point64":
        prompts = make_prompts(8, preset.prompt_words, seed)
        return {"images1": random_images(64, sizes=size, seed=seed), "images2": None, "prompts": [prompts[k // 8] for k in range(64)]}
    raise ValueError(f"unknown scenario {name!r}")


SCENARIOS = ("ref16", "rank8", "point64", "video16", "checklist")


# ---- FLOPs ------------------------------------------------------------------------------------------------
def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flop_model(rm):
    """FLOPs of vision encoding per medium and of language-model tokens (dense 2*params plus attention), and of
    the LM head per position."""
    base = getattr(rm.model, rm.model.base_model_prefix)
    lm = base.language_model
    cfg = rm.model.config.get_text_config()
    lm_dense = _params(lm) - _params(base.get_input_embeddings())
    vision = [m for n, m in base.named_children() if n != "language_model"]
    vis_dense = sum(_params(m) for m in vision)
    head = rm.model.get_output_embeddings().weight.numel()
    d, layers = cfg.hidden_size, cfg.num_hidden_layers

    def image(e):
        n = e.pixels.shape[0] if e.pixels.dim() == 2 else e.pixels.shape[0] * (e.pixels.shape[-1] // 14) ** 2
        return 2 * vis_dense * n

    def tokens(new: int, context_before: int):
        # each new token attends to everything before it: QK^T and AV, 4*d per layer per pair
        attended = new * context_before + new * (new + 1) / 2
        return 2 * lm_dense * new + 4 * layers * d * attended

    return image, tokens, 2 * head


def method_flops(rm, items, batch: int = 16) -> dict:
    """FLOPs each method computes on ``items``, padding included (rdfast: the engine's own prefix groups,
    each distinct medium once, equal-length batches, so no padding; hf_expert: distinct media once, padded
    batches; hf_batched: every medium per item, padded batches; naive: one item at a time, the LM head at
    every position). The head counts full-vocabulary rows (normalize="vocab" reads the logsumexp)."""
    image, tokens, head = flop_model(rm)
    n = len(items)
    distinct = sum(image(e) for e in {id(e): e for it in items for e in it.media}.values())
    every = sum(image(e) for it in items for e in it.media)
    padded = 0
    for start in range(0, n, batch):
        part = items[start : start + batch]
        padded += len(part) * tokens(max(len(it.input_ids) for it in part), 0)
    rd = distinct + head * n
    keys = [sharing_keys(it, rm.family.media_token_ids) for it in items]
    for members, cut in prefix_groups(keys):
        rd += tokens(cut, 0) + sum(tokens(len(items[i].input_ids) - cut, cut) for i in members)
    return {"rdfast": rd, "hf_expert": distinct + padded + head * n, "hf_batched": every + padded + head * n,
            "naive": every + sum(tokens(len(it.input_ids), 0) + head * len(it.input_ids) for it in items)}


# ---- the ways to score: rdfast here, plain transformers in bench/baselines.py -----------------------------
def run_rdfast(rm, items):
    with torch.inference_mode():
        return rm.item_logprobs(items)


def run_ask(rm, images, questions, instruction):
    """The checklist end to end from PIL images: one ``rm.ask`` call."""
    with torch.inference_mode():
        return rm.ask(images=images, questions=questions, instruction=instruction).p_yes


def run_separate_calls(rm, pairs, instruction):
    """The checklist as users write it without ``ask``: one ``rm.score`` call per (image, question) pair."""
    with torch.inference_mode():
        return torch.cat([rm.score(images=[im], prompts=[q], instruction=instruction) for im, q in pairs])


def timed_round_robin(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds per function, timed in alternation (a, b, c, a, b, c, ...) so that load from other
    processes falls on every method alike; also each function's warm-up result."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    results = {name: fn() for name, fn in fns.items()}  # warm-up (and the results, checked below)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, results


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(args, preset: Preset):
    from rdfast import RewardModel
    from rdfast.testing import tiny_checkpoint

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if preset.gpu_only and args.model is None and device.type != "cuda":
        print(f"throughput.py: error: --preset {args.preset} builds billions of random weights and runs on a GPU only "
              f"(device here: {device}); on CPU use a *-small preset", file=sys.stderr)
        raise SystemExit(2)

    path = args.model or tiny_checkpoint(preset.family, **preset.overrides)
    dtype = DTYPES.get(getattr(args, "dtype", None))
    return RewardModel.from_pretrained(path, device=args.device, dtype=dtype, normalize="vocab", batch_size=16)


def measure(rm, name: str, preset: Preset, repeats: int | None = None, naive_subset: int | None = None,
            roofline: dict | None = None, expert_model=None, seed: int = 0, limit: int | None = None,
            stock_model=None) -> dict:
    """One scenario, every method timed in alternation. ``roofline``: bench/roofline.py's peak for this run's
    dtype and rdfast's thread count; ``stock_model`` / ``expert_model``: the stock and matched baselines' models
    (baselines.baseline_models; default rm.model)."""
    data = scenario_inputs(name, preset, seed)
    data.update({k: data[k][:limit] for k in ("images1", "images2", "prompts") if data[k] is not None})  # --smoke
    images = [data["images1"]] if data["images2"] is None else [data["images1"], data["images2"]]
    t0 = time.perf_counter()
    items = rm.encode(data["prompts"], images, preset.instruction, kind=data.get("kind", "image"))
    preprocess_s = time.perf_counter() - t0
    repeats = preset.repeats if repeats is None else repeats
    subset = items[: naive_subset or preset.naive_subset]
    threads = scoring_threads() if rm.device.type == "cpu" else None
    expert_model = rm.model if expert_model is None else expert_model
    stock_model = rm.model if stock_model is None else stock_model
    t, out = timed_round_robin({
        "rdfast": lambda: run_rdfast(rm, items),
        "hf_expert_stock": lambda: run_hf_expert(rm, items, model=stock_model),
        "hf_expert_matched": lambda: run_hf_expert(rm, items, model=expert_model, threads=True),
        "hf_batched": lambda: run_hf_batched(rm, items, model=stock_model),
        "naive": lambda: run_naive(rm, subset, model=stock_model)}, repeats)
    n, t_rd = len(items), t["rdfast"]
    t_expert = min(t["hf_expert_stock"], t["hf_expert_matched"])  # the headline: the faster baseline
    flops, naive_flops = method_flops(rm, items), method_flops(rm, subset)["naive"]
    if not takes_encoder_outputs(getattr(rm.model, rm.model.base_model_prefix)):
        flops["hf_expert"] = flops["hf_batched"]  # an older transformers: every image encoded per batch
    per_pair_rd = flops["rdfast"] / n
    separate = {}
    if "checklist" in data:  # end to end from PIL images: one ask call against one score call per pair
        images, questions = data["checklist"]
        pairs = [(im, q) for im in images for q in questions][: naive_subset or 2 * preset.naive_subset]
        ts, outs = timed_round_robin({"ask": lambda: run_ask(rm, images, questions, preset.instruction),
                                      "separate": lambda: run_separate_calls(rm, pairs, preset.instruction)}, repeats)
        per_pair_ask, per_pair_separate = ts["ask"] / len(images) / len(questions), ts["separate"] / len(pairs)
        got = outs["ask"].flatten()[: len(pairs)].log()
        separate = {"ask_pairs_per_s": 1 / per_pair_ask, "separate_calls_pairs_per_s": 1 / per_pair_separate,
                    "speedup_vs_separate_calls": per_pair_separate / per_pair_ask,
                    "max_abs_logp_diff_vs_separate_calls": float((got - outs["separate"].log()).abs().max())}
    peak = roofline["flops_per_s"] if roofline else None
    gpu_peak = gpu_peaks(machine(rm.device)) if rm.device.type == "cuda" else None
    diff = lambda key: float((out["rdfast"].float() - out[key].float()).abs().max())  # noqa: E731
    return {
        "name": name,
        "pairs": n,
        "rdfast_pairs_per_s": n / t_rd,
        "hf_expert_pairs_per_s": n / t_expert,
        "hf_expert_stock_pairs_per_s": n / t["hf_expert_stock"],
        "hf_expert_matched_pairs_per_s": n / t["hf_expert_matched"],
        "hf_batched_pairs_per_s": n / t["hf_batched"],
        "naive_pairs_per_s": len(subset) / t["naive"],
        "speedup_vs_hf_expert": t_expert / t_rd,
        "speedup_vs_hf_batched": t["hf_batched"] / t_rd,
        "speedup_vs_naive": (t["naive"] / len(subset)) / (t_rd / n),
        # FLOPs each method computes per pair, padding included, over rdfast's: >= 1 for every baseline
        "work_ratio": {"hf_expert": flops["hf_expert"] / flops["rdfast"], "hf_batched": flops["hf_batched"] / flops["rdfast"],
                       "naive": naive_flops / len(subset) / per_pair_rd},
        # the time rdfast's FLOPs take at the peak GEMM rate, over rdfast's time: at most 1
        "fraction_of_roofline": (flops["rdfast"] / peak) / t_rd if peak else None,
        "unique_tflops": flops["rdfast"] / 1e12,  # rdfast's FLOPs (each distinct token and medium once)
        "unique_tflop_per_s": flops["rdfast"] / t_rd / 1e12,
        "fraction_of_bf16_peak": (flops["rdfast"] / t_rd / gpu_peak[0]) if gpu_peak else None,  # dense, GPU only
        "rdfast_threads": threads,
        "max_abs_logp_diff_vs_hf_expert": max(diff("hf_expert_stock"), diff("hf_expert_matched")),
        "max_abs_logp_diff_vs_hf": diff("hf_batched"),
        "preprocess_s": preprocess_s,
        "mean_tokens": sum(len(it.input_ids) for it in items) / n,
        **separate,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--model", default=None, help="a real checkpoint directory (overrides the preset's model)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="the model's dtype, every method (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--contention", type=int, default=0,
                        help="run N single-threaded busy-loop co-runner processes while measuring (bench/contention.py)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the scenarios' random images and prompts")
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI: the first 16 pairs, 1 repeat, a small roofline")
    parser.add_argument("--batching", default="length", choices=BATCHING,
                        help="engine batching: equal-length batches (default), varlen attention, or padding")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--csv", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "throughput.csv"))
    args = parser.parse_args(argv)
    if args.contention < 0:
        parser.error(f"--contention must be 0 or more, got {args.contention}")
    preset = PRESETS[args.preset]
    rm = load_model(args, preset)
    rm.options = replace(rm.options, batching=args.batching)
    stock_model, expert_model, matched_path = baseline_models(rm)
    limit, repeats = (16, 1) if args.smoke else (None, args.repeats)
    rows = []
    with co_runners(args.contention) as pids:
        # the bound under the same conditions: rdfast's dtype and the thread count its policy picks now
        threads = scoring_threads() if rm.device.type == "cpu" else None
        roof = peak(rm.device, rm.dtype, threads, *((256, 0.05) if args.smoke else (2048, 0.5)))
        print(f"roofline: {roof['flops_per_s'] / 1e9:.0f} GFLOP/s ({roof['path']}, {roof['dtype']}, {roof['threads']} threads)"
              if roof else "roofline: none for this device and dtype")
        print(f"{'scenario':9s} {'rdfast/s':>9s} {'expert/s':>9s} {'vs expert':>9s} {'vs hf':>7s} {'vs naive':>9s} "
              f"{'work hf_expert':>14s} {'of roofline':>11s}")
        for name in args.scenarios.split(","):
            r = measure(rm, name, preset, repeats, 1 if args.smoke else None, roof, expert_model, args.seed, limit,
                        stock_model=stock_model)
            rows.append(r)
            roof_text = f"{r['fraction_of_roofline']:11.2f}" if r["fraction_of_roofline"] is not None else f"{'-':>11s}"
            work = r["work_ratio"]["hf_expert"] if isinstance(r["work_ratio"], dict) else r["work_ratio"]  # nan: a dry run
            print(f"{name:9s} {r['rdfast_pairs_per_s']:9.1f} {r['hf_expert_pairs_per_s']:9.1f} {r['speedup_vs_hf_expert']:8.2f}x "
                  f"{r['speedup_vs_hf_batched']:6.2f}x {r['speedup_vs_naive']:8.1f}x {work:13.2f}x {roof_text}")
            if "speedup_vs_separate_calls" in r:
                print(f"{'':9s} rm.ask {r['ask_pairs_per_s']:.1f} pairs/s end to end, {r['speedup_vs_separate_calls']:.2f}x "
                      f"one rm.score call per pair ({r['separate_calls_pairs_per_s']:.2f} pairs/s)")
        load = load_average()  # under the co-runners, at the end of the measurement
    result = {**environment(rm.device), "load_average_end": load, "preset": args.preset, "model": args.model,
              "dtype": str(rm.dtype).removeprefix("torch."), "contention": args.contention, "co_runner_pids": pids, "batching": args.batching,
              "hf_expert_matched_path": matched_path,
              "hf_expert_distinct_media_once": takes_encoder_outputs(getattr(rm.model, rm.model.base_model_prefix)), "roofline": roof, "smoke": args.smoke, "scenarios": rows}
    if args.json:
        write_json(args.json, result)
    if args.csv:
        append_csv(args.csv, flat_rows(result, "scenarios"))
    return result


if __name__ == "__main__":
    main()
