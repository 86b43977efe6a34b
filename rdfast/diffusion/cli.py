"""``rdfast refl`` and ``rdfast search``: ReFL finetuning and Search over Paths from the command line.

    rdfast refl   --pipeline DIR --reward DIR --prompts prompts.txt --out runs/refl   [--steps 100 --lora-rank 16]
    rdfast search --pipeline DIR --verifier DIR --prompt "a red fox" --out runs/search [--n 4 --m 4 --baseline]

``--pipeline tiny:flux|tiny:sd3|tiny:sd|tiny:sdxl|tiny:wan`` and ``--reward/--verifier tiny:qwen2_vl`` use tiny
random models built locally (nothing is downloaded): the pipeline is the real one, the pictures are noise.
``--pipeline toy:generator`` and ``--reward toy:pairwise`` / ``--verifier toy:verifier`` are the trained toy-world
models shipped with rdfast (rdfast.toyworld; prompts such as "two red circles"), run at their own 64x64.
Video pipelines (Wan 2.1, ``tiny:wan``) take ``--num-frames``; their rewards judge videos ("t2v" unless
``--instruction`` says otherwise), and search saves the best video as an animated GIF and a frame strip PNG.
Prompt files: one prompt per line (.txt) or JSON lines with a "prompt" field (.jsonl).

``refl`` writes ``OUT/final`` (a LoRA that diffusers' ``pipe.load_lora_weights(OUT/final)`` loads), ``log.jsonl``,
and ``before_after.png`` / ``before_after.json``: the first ``--samples`` prompts sampled from the same noise
before and after training, with their rewards (the training reward: P(better than the Best-of-N reference)).
Weights load from safetensors only unless ``--allow-pickle``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..errors import InputError, run_command
from ..model import RewardModel
from ..prompts import ReservedText
from ..resolve import resolve
from ..testing import tiny_checkpoint
from .ema import check_decay
from .pipelines import load_pipeline
from .pipelines.registry import resolve_pipeline
from .refl import ReFLTrainer
from .reward import PairwiseReward, PointwiseReward
from .search import best_of_n, equal_total_calls_k, pipeline_problem, search_over_paths, total_calls
from .testing import DEFAULT_FRAMES, DEFAULT_SIDE


def register(subparsers) -> None:
    """Add the ``refl`` and ``search`` subcommands to rdfast's argparse subparsers."""
    p = subparsers.add_parser("refl", help="ReFL finetuning of a diffusers pipeline against a reward model")
    _common(p)
    p.add_argument("--reward", required=True, help="reward model directory, tiny:qwen2_vl or toy:pairwise")
    p.add_argument("--steps", type=int, default=100, help="optimizer updates")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per update")
    p.add_argument("--grad-steps", type=int, default=1, help="K: sampling steps taken with gradient")
    p.add_argument("--late-range", type=float, nargs=2, default=(0.7, 1.0), metavar=("LO", "HI"),
                   help="where the last gradient step falls, as fractions of the schedule")
    p.add_argument("--loss", default="relu", choices=("relu", "neg"), help="relu(margin - r) or -r")
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lora-rank", type=int, default=16, help="0: full finetuning")
    p.add_argument("--best-of", type=int, default=16, help="Best-of-N candidates per reference")
    p.add_argument("--top-k", type=int, default=2, help="references per prompt (rewards averaged)")
    p.add_argument("--debias", action="store_true", help="judge both image orders")
    p.add_argument("--no-memory-efficient", action="store_true", help="no activation checkpointing (naive path)")
    p.add_argument("--tile-vae", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the denoiser and VAE")
    p.add_argument("--reward-device", default=None, help="device of the reward model (default: --device)")
    p.add_argument("--save-every", type=int, default=0, help="also save every N updates")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an EMA of the trained weights (e.g. 0.99); saved models and after-samples use it")
    p.add_argument("--samples", type=int, default=4,
                   help="prompts sampled before and after training into before_after.png/.json (0: none)")
    p.set_defaults(func=cmd_refl)

    p = subparsers.add_parser("search", help="Search over Paths with a pointwise verifier (and Best-of-N)")
    _common(p)
    p.add_argument("--verifier", required=True, help="pointwise reward model directory, tiny:qwen2_vl or toy:verifier")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    p.add_argument("--n", type=int, default=4, help="survivors N (and starting noises)")
    p.add_argument("--m", type=int, default=4, help="branches per survivor M")
    p.add_argument("--start-step", type=int, default=None, help="step where rounds begin (default: half)")
    p.add_argument("--delta-f", type=int, default=1, help="steps re-noised back per round")
    p.add_argument("--delta-b", type=int, default=2, help="steps denoised forward per round (> delta-f)")
    p.add_argument("--batch-size", type=int, default=None, help="cap on the denoiser/verifier batch")
    p.add_argument("--baseline", action="store_true", help="also run Best-of-N at equal total calls (denoiser + verifier)")
    p.add_argument("--verifier-device", default=None)
    p.set_defaults(func=cmd_search)


def _common(p):
    p.add_argument("--pipeline", required=True,
                   help="diffusers pipeline directory, tiny:flux / tiny:sd3 / tiny:sd / tiny:sdxl / tiny:wan, or "
                        "toy:generator")
    p.add_argument("--prompts", default=None, help="prompt file: .txt (one per line) or .jsonl ({'prompt': ...})")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--height", type=int, default=None, help="default: 32 for tiny pipelines, the trained size for "
                                                                    "toy: ones (64), else 512")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--num-frames", type=int, default=None,
                   help="video pipelines: frames per video, 1 + k * the VAE's temporal factor (default: 9 for "
                        "tiny:wan, else the pipeline's, Wan 81)")
    p.add_argument("--instruction", default=None,
                   help="reward instruction: overall, alignment, quality, motion, t2v, i2v or text "
                        "(default: the reward model's; t2v for videos)")
    p.add_argument("--rm-frames", type=int, default=None,
                   help="videos: frames the reward model sees per video, evenly spread (default: all)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true", help="turn CUDA graphs off")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled (.bin) weights for the pipeline and reward model: unpickling can run code")


def read_prompts(path: str) -> list[str]:
    """Prompts from a .txt (one per line, blank lines skipped) or .jsonl file; errors name the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts: file not found: {path}")
    out = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    rec = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{number}: bad JSON: {err}") from err
                prompt = rec.get("prompt") if isinstance(rec, dict) else None
                if not isinstance(prompt, str) or not prompt.strip():
                    raise ValueError(f"{path}:{number}: 'prompt' must be a non-empty string")
                out.append(prompt)
            else:
                out.append(line.strip())
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def _prompts(args) -> list[str]:
    prompts = list(getattr(args, "prompt", None) or [])
    if args.prompts:
        prompts += read_prompts(args.prompts)
    if not prompts:
        raise SystemExit("rdfast: give --prompts FILE" + (" or --prompt TEXT" if hasattr(args, "prompt") else ""))
    return prompts


def _tiny_key(spec: str):
    generator, _, size = spec[5:].partition(":")
    return generator, size or "tiny"


def _size(args):
    default = 512
    if args.pipeline.startswith("tiny:"):
        default = DEFAULT_SIDE.get(_tiny_key(args.pipeline), 32)
    elif args.pipeline.startswith("toy:"):
        default = _trained_side(resolve_pipeline(args.pipeline))
    return args.height or default, args.width or default


def _trained_side(directory: str) -> int:
    """The image side a toy pipeline was trained at: its autoencoder's ``sample_size`` (toy:generator: 64)."""
    with open(os.path.join(directory, "vae", "config.json")) as fh:
        return int(json.load(fh)["sample_size"])


def _frames(args):
    """--num-frames, or the tiny video pipeline's default; None leaves it to the wrapper (image pipelines: none)."""
    if args.num_frames is not None or not args.pipeline.startswith("tiny:"):
        return args.num_frames
    return DEFAULT_FRAMES.get(_tiny_key(args.pipeline))


def _check_spec(value: str, flag: str):
    """Resolve a --pipeline or --reward/--verifier spec before any heavy work (one clear error otherwise)."""
    try:
        if flag == "--pipeline":
            if not (value.startswith("tiny:") and value.endswith(":gpu")):
                resolve_pipeline(value)
        else:
            resolve(value, tiny_checkpoint, "reward model")
    except InputError as err:
        raise InputError(f"{flag}: {err}") from err


def _reward_model(spec: str, device, allow_pickle: bool, prompts: list[str]) -> RewardModel:
    """The reward model or verifier, with every prompt checked against its tokenizer before any sampling."""
    rm = RewardModel.from_pretrained(spec, device=device, allow_pickle=allow_pickle)
    reserved = ReservedText(rm.tokenizer)
    for i, prompt in enumerate(prompts):
        reserved.check(prompt, "prompts", i)
    return rm


def cmd_refl(args):
    _check_spec(args.pipeline, "--pipeline")
    _check_spec(args.reward, "--reward")
    if args.ema_decay is not None:
        try:
            check_decay(args.ema_decay, "--ema-decay")
        except ValueError as e:
            raise InputError(str(e)) from None
    prompts = _prompts(args)
    height, width = _size(args)
    os.makedirs(args.out, exist_ok=True)
    rm = _reward_model(args.reward, args.reward_device or args.device, args.allow_pickle, prompts)
    pipe = load_pipeline(args.pipeline, device=args.device, allow_pickle=args.allow_pickle)
    reward = PairwiseReward(rm, n=args.best_of, top_k=args.top_k, instruction=args.instruction, debias=args.debias,
                            num_frames=args.rm_frames)
    trainer = ReFLTrainer(pipe, reward, height=height, width=width, num_frames=_frames(args),
                          num_steps=args.num_inference_steps,
                          grad_steps=args.grad_steps, late_range=tuple(args.late_range),
                          guidance_scale=args.guidance_scale, loss=args.loss, margin=args.margin, lr=args.lr,
                          lora_rank=args.lora_rank or None, memory_efficient=not args.no_memory_efficient,
                          tile_vae=args.tile_vae, autocast="bf16" if args.bf16 else None,
                          graphs=not args.no_graphs, seed=args.seed, ema_decay=args.ema_decay)
    # with --ema-decay, what is saved and shown after training is the averaged weights, not the last iterate
    averaged = trainer.ema.swapped if trainer.ema is not None else contextlib.nullcontext
    trainer.prepare_references(prompts)
    shown = list(dict.fromkeys(prompts))[: max(args.samples, 0)]
    before = _samples(trainer, shown, args.seed)  # before the first update: full finetuning changes the base
    log_path = os.path.join(args.out, "log.jsonl")
    with open(log_path, "w") as log, tqdm(total=args.steps, desc="rdfast refl", unit="step") as bar:
        for step in range(args.steps):
            batch = [prompts[(step * args.batch_size + i) % len(prompts)] for i in range(args.batch_size)]
            info = trainer.step(batch)
            log.write(json.dumps({"step": step + 1, **info}) + "\n")
            log.flush()
            bar.set_postfix(reward=f"{info['reward']:.4f}", loss=f"{info['loss']:.4f}")
            bar.update(1)
            if args.save_every and (step + 1) % args.save_every == 0:
                with averaged():
                    trainer.save(os.path.join(args.out, f"step-{step + 1}"))
    with averaged():
        trainer.save(os.path.join(args.out, "final"))
        after = _samples(trainer, shown, args.seed)  # (None, []) when nothing is shown
    print(f"wrote {log_path} and {os.path.join(args.out, 'final')}")
    if shown:
        _save_before_after(args.out, shown, before, after, args.seed)
        print(f"wrote {os.path.join(args.out, 'before_after.png')} and before_after.json")


def _samples(trainer, prompts, seed):
    """Samples from fixed noise (``seed``) and their rewards: (images or videos [N, ...], rewards [N] floats)."""
    if not prompts:
        return None, []
    images = trainer.sample(prompts, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rewards = trainer.reward(images, prompts).float().tolist()
    return images.cpu(), rewards


def _pil(image: torch.Tensor) -> Image.Image:
    """An image [3, H, W] in [0, 1] as PIL; a video [T, 3, H, W] as its frames side by side."""
    if image.dim() == 4:
        image = torch.cat(list(image), dim=-1)
    return Image.fromarray((image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _save_before_after(out, prompts, before, after, seed):
    """``before_after.png``: one row per prompt, the sample before | after training, each captioned with its
    reward (small samples are enlarged); ``before_after.json``: the rewards per prompt and their means."""
    rows = []
    for (img_b, img_a), r_b, r_a in zip(zip(before[0], after[0]), before[1], after[1]):
        cells = []
        for label, img, r in (("before", img_b, r_b), ("after", img_a, r_a)):
            pic = _pil(img)
            scale = max(1, -(-128 // pic.height))  # at least 128 px tall, so the caption is readable
            pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
            cell = Image.new("RGB", (max(pic.width, 120), pic.height + 14), "white")
            cell.paste(pic, (0, 14))
            ImageDraw.Draw(cell).text((2, 1), f"{label} {r:.4f}", fill="black")
            cells.append(cell)
        rows.append(cells)
    width = sum(c.width for c in rows[0]) + 4
    grid = Image.new("RGB", (width, sum(r[0].height + 16 for r in rows)), "white")
    y = 0
    for prompt, cells in zip(prompts, rows):
        ImageDraw.Draw(grid).text((2, y + 2), prompt[:120], fill="black")
        x, y = 0, y + 16
        for cell in cells:
            grid.paste(cell, (x, y))
            x += cell.width + 4
        y += cells[0].height
    grid.save(os.path.join(out, "before_after.png"))
    summary = {"seed": seed, "reward": "the training reward of one sample per prompt from the same noise",
               "prompts": [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before[1], after[1])],
               "mean_before": sum(before[1]) / len(prompts), "mean_after": sum(after[1]) / len(prompts)}
    with open(os.path.join(out, "before_after.json"), "w") as fh:
        json.dump(summary, fh, indent=1)


def cmd_search(args):
    _check_spec(args.pipeline, "--pipeline")
    _check_spec(args.verifier, "--verifier")
    prompts = _prompts(args)
    height, width = _size(args)
    os.makedirs(args.out, exist_ok=True)
    verifier = PointwiseReward(_reward_model(args.verifier, args.verifier_device or args.device, args.allow_pickle,
                                             prompts), args.instruction, num_frames=args.rm_frames)
    pipe = load_pipeline(args.pipeline, device=args.device, allow_pickle=args.allow_pickle)

    def pil(img):
        return Image.fromarray((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())

    def save_png(img, path):
        """An image [3, H, W] as PNG; a video [T, 3, H, W] as a frame strip PNG and an animated GIF beside it."""
        if img.dim() == 3:
            pil(img).save(path)
            return
        pil(torch.cat(list(img), dim=-1)).save(path)
        frames = [pil(f) for f in img]
        frames[0].save(path[:-4] + ".gif", save_all=True, append_images=frames[1:], duration=125, loop=0)

    summary = []
    for i, prompt in enumerate(prompts):
        problem = pipeline_problem(pipe, prompt, args.num_inference_steps, height, width, args.guidance_scale,
                                   graphs=not args.no_graphs, num_frames=_frames(args))
        res = search_over_paths(problem, verifier, n=args.n, m=args.m, start_step=args.start_step,
                                delta_f=args.delta_f, delta_b=args.delta_b,
                                generator=torch.Generator().manual_seed(args.seed + i), batch_size=args.batch_size)
        stem = os.path.join(args.out, f"{i:03d}")
        save_png(res.best_image, stem + "_best.png")
        res.save_json(stem + "_tree.json")
        row = {"prompt": prompt, "search_reward": res.best_reward, "nfe_search": res.nfe["denoiser"],
               "verifier_calls_search": res.nfe["verifier"]}
        base = None
        if args.baseline:
            k = equal_total_calls_k(total_calls(res.nfe), args.num_inference_steps, problem.sampler.evals_per_step)
            base = best_of_n(problem, verifier, k, generator=torch.Generator().manual_seed(10_000 + args.seed + i),
                             batch_size=args.batch_size)
            save_png(base.best_image, stem + "_bon.png")
            row.update(bon_reward=base.best_reward, nfe_bon=base.nfe["denoiser"], verifier_calls_bon=base.nfe["verifier"],
                       bon_k=k)
        res.save_figure(stem + "_tree.png", baseline=base)
        summary.append(row)
        print(json.dumps(row), file=sys.stderr)
    with open(os.path.join(args.out, "summary.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in summary)
    print(f"wrote {len(summary)} result(s) to {args.out}")


def main(argv=None):
    """``python -m rdfast.diffusion.cli refl|search ...``: the same commands as ``rdfast refl|search``.

    rdfast's own CLI (``rdfast.cli``) adds them through ``register``; this entry parses only these two.

    Args:
        argv: the arguments after the program name (None: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="rdfast")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    run_command(args.func, args, args.command)


if __name__ == "__main__":
    main()
