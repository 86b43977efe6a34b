"""Synthetic preference task: do the three RewardDance paradigms learn to judge text-image alignment?

Images of coloured shapes are rendered with PIL; a prompt names a colour, a shape and a count ("two red
circles"). The preferred image matches the prompt; the rejected one differs in exactly one attribute
(colour, shape or count, spread evenly), with a fresh random layout. Held out:

- in-domain test: new random pairs of colour-shape combinations seen in training;
- out-of-domain test: colour-shape combinations that appear in NO training prompt or image (warm-up
  included).

A tiny Qwen2-VL is built from a config (nothing downloaded) and warmed up once (shared by all paradigms)
on generic grounding tasks over the synthetic images: captioning, one-attribute visual questions (open and
yes/no), and describing an image slot or repeating an unrelated text description inside the reward prompt
layouts. No warm-up example is a preference or a judgement of a whole description. Then a generative
pairwise, a generative pointwise and a regressive reward model train from it with the same budget
(optimizer steps, pairs per step, learning rate and schedule, full fine-tuning). Accuracy = pairs judged
correctly (P(image 2 better) > 0.5 iff image 2 is the preferred one), scored by the saved directories.

Why this warm-up: a tiny random VLM learns captions quickly but "does this word match this image?" only
after a long plateau (a multiplicative text-image interaction); with captioning alone (``--warmup-mix
caption``) all three reward models stayed at chance within the budget in our runs. The longer mixed
warm-up first forms that matching circuit (its yes/no VQA accuracy is reported).

    python bench/train_synthetic.py --json bench/results/train_synthetic.json   # minutes on CPU (see the report)
    python bench/train_synthetic.py --smoke --json /tmp/smoke.json               # seconds; plumbing only

Writes the JSON report, a learning-curve PNG next to it, and prints a short table. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import torch
from PIL import Image, ImageDraw

from common import load_average, machine, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rdfast.model import RewardModel
from rdfast.templates import DEFAULT
from rdfast.testing import tiny_checkpoint
from rdfast.toyworld.warmup import lm_items, warmup_optimizer  # one copy of the items builder and the optimizer
from rdfast.train import (
    PreferenceRecord,
    TrainConfig,
    Trainer,
    accuracy,
    evaluate,
    load_trained,
    pair_probabilities,
    sequence_logprobs,
)
from rdfast.train.plots import smooth

COLOURS = {"red": (215, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220), "yellow": (230, 195, 20)}
SHAPES = ("circle", "square", "triangle")
COUNTS = {1: "one", 2: "two", 3: "three"}
ATTRIBUTES = ("colour", "shape", "count")
# never in a training prompt or image: each colour and each shape is still seen, only not together
HELD_OUT = {("red", "triangle"), ("green", "square"), ("blue", "circle")}
INSTRUCTION = "Check the colour, shape and count."  # a task-aware instruction, kept short
VISION_FROZEN, VISION_LR_SCALE = 0.15, 0.3
CAPTION_QUESTION = "Describe the image."

PRESETS = {
    "full": {"size": 56, "train_pairs": 8000, "test_pairs": 400, "warmup_steps": 6000, "warmup_batch": 16,
             "steps": 1200, "batch": 16, "warmup_lr": 1e-3, "lr": 3e-4, "eval_every": 150, "curve_pairs": 200},
    "smoke": {"size": 56, "train_pairs": 32, "test_pairs": 8, "warmup_steps": 2, "warmup_batch": 4, "steps": 2,
              "batch": 4, "warmup_lr": 1e-3, "lr": 1e-4, "eval_every": 1, "curve_pairs": 8},
}
MODEL = {}  # config overrides of rdfast.testing's tiny Qwen2-VL (text 64 x 2 layers, vision 64 x 2 blocks)


# ----------------------------------------------------------------------------------------------------
# The task


def phrase(colour, shape, count) -> str:
    return f"{COUNTS[count]} {colour} {shape}{'s' if count > 1 else ''}"


def render(colour, shape, count, rng: random.Random, size: int):
    """A size x size RGB image with ``count`` non-overlapping shapes of one colour on a light background."""
    shade = rng.randint(225, 250)
    img = Image.new("RGB", (size, size), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    boxes, lo, hi = [], size // 4, size // 3
    for _ in range(count):
        for attempt in range(400):  # shrink the shape if it does not fit beside the others
            s = rng.randint(lo, hi) - attempt // 100
            x, y = rng.randint(1, size - s - 2), rng.randint(1, size - s - 2)
            box = (x, y, x + s, y + s)
            if all(box[2] + 2 < b[0] or b[2] + 2 < box[0] or box[3] + 2 < b[1] or b[3] + 2 < box[1] for b in boxes):
                break
        else:
            raise RuntimeError("cannot place the shapes")
        boxes.append(box)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            x0, y0, x1, y1 = box
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


def combos(ood: bool):
    return [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == ood]


def make_pairs(n: int, rng: random.Random, size: int, ood: bool = False, instruction: str = INSTRUCTION):
    """n PreferenceRecords; record i's rejected image differs in attribute i % 3 (colour, shape, count)."""
    pool = combos(ood)
    out = []
    for i in range(n):
        colour, shape = rng.choice(pool)
        count = rng.choice(list(COUNTS))
        attribute = ATTRIBUTES[i % 3]
        bad = [colour, shape, count]
        while True:
            if attribute == "colour":
                bad[0] = rng.choice([c for c in COLOURS if c != colour])
            elif attribute == "shape":
                bad[1] = rng.choice([s for s in SHAPES if s != shape])
            else:
                bad[2] = rng.choice([k for k in COUNTS if k != count])
            # training images never show a held-out combination
            if ood or (bad[0], bad[1]) not in HELD_OUT:
                break
        good_img = render(colour, shape, count, rng, size)
        bad_img = render(*bad, rng, size)
        second_wins = rng.random() < 0.5
        im1, im2 = (bad_img, good_img) if second_wins else (good_img, bad_img)
        out.append(PreferenceRecord(phrase(colour, shape, count), im1, im2, 2 if second_wins else 1,
                                    instruction=instruction, extra={"attribute": attribute,
                                                                    "rejected": phrase(*bad)}))
    return out


# ----------------------------------------------------------------------------------------------------
# Shared warm-up: captioning (LM loss through the fused head with per-row targets)


def caption_items(rm, images, captions):
    """"<image> Describe the image." -> caption."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + CAPTION_QUESTION}]}]
    return lm_items(rm, [(messages, [im], cap) for im, cap in zip(images, captions)])


def with_question(messages, question):
    """A reward prompt's messages with its yes/no question replaced by ``question``."""
    content = [dict(c) for c in messages[0]["content"]]
    content[-1]["text"] = "\n" + question
    return [{"role": "user", "content": content}]


WARMUP_MIXES = {
    # generic VLM skills, none of them a preference or a whole-description judgement
    "caption+vqa": ("caption", "vqa", "describe", "vqa", "repeat", "vqa"),
    "caption": ("caption", "caption", "describe", "describe", "repeat"),  # captioning and reading only
}


def vqa_example(scene, image, rng):
    """One visual question about ONE attribute, open ("What colour are the shapes?" -> "red") or yes/no
    ("Are there two shapes?" -> "no"), the question before or after the image."""
    colour, shape, count = scene
    attribute = rng.randrange(3)
    if rng.random() < 0.5:
        question = ("What colour are the shapes?", "What shape are they?", "How many shapes are there?")[attribute]
        answer = (colour, shape + ("s" if count > 1 else ""), COUNTS[count])[attribute]
    else:
        truth = rng.random() < 0.5
        choices = (list(COLOURS), list(SHAPES), list(COUNTS))[attribute]
        value = scene[attribute] if truth else rng.choice([v for v in choices if v != scene[attribute]])
        question = {0: f"Are the shapes {value}?", 1: f"Are the shapes {value}s?"}.get(attribute)
        question = question or ("Is there one shape?" if value == 1 else f"Are there {COUNTS[value]} shapes?")
        answer = "yes" if truth else "no"
    parts = [{"type": "image"}, {"type": "text", "text": "\n" + question}]
    if rng.random() < 0.5:
        parts = [{"type": "text", "text": question + "\n"}, {"type": "image"}]
    return [{"role": "user", "content": parts}], [image], answer


def warmup_examples(rng, pool, size, batch, instruction, mix="caption+vqa"):
    """A mixed batch of generic grounding tasks (none is a preference judgement).

    caption: "<image> Describe the image." -> "two red circles". vqa: one question about one attribute.
    describe / repeat: inside the reward models' own prompt layouts (instruction, an UNRELATED random text
    description, one or two images) with the yes/no question replaced by "Describe image 1.", "Describe
    image 2.", "Describe the image." or "Repeat the text description.": the model learns to read each image
    slot and the description, the two things a judge compares.
    """
    tasks = WARMUP_MIXES[mix]
    out = []
    for k in range(batch):
        scenes = [(*rng.choice(pool), rng.choice(list(COUNTS))) for _ in range(2)]
        images = [render(*x, rng, size) for x in scenes]
        text = phrase(*rng.choice(pool), rng.choice(list(COUNTS)))  # unrelated to the images
        task = tasks[k % len(tasks)]
        pair = rng.random() < 0.5
        messages = DEFAULT.messages("image_pair" if pair else "image", text, instruction)
        if task == "caption":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + CAPTION_QUESTION}]}]
            out.append((messages, images[:1], phrase(*scenes[0])))
        elif task == "vqa":
            out.append(vqa_example(scenes[0], images[0], rng))
        elif task == "describe":
            which = rng.randrange(2) if pair else 0
            question = f"Describe image {which + 1}." if pair else "Describe the image."
            out.append((with_question(messages, question), images[: 1 + pair], phrase(*scenes[which])))
        else:
            out.append((with_question(messages, "Repeat the text description."), images[: 1 + pair], text))
    return out


def caption_logprob(rm, images, captions):
    """Summed log-probability of each caption given its image: [N] (teacher forcing)."""
    inputs, labels = caption_items(rm, images, captions)
    logp = sequence_logprobs(rm, rm.hidden_states(inputs), labels)
    return torch.stack([x.sum() for x in logp.split((labels[:, 1:] != -100).sum(1).tolist())])


def caption_attribute_accuracy(rm, scenes, images) -> dict:
    """Per attribute: how often the true caption is likelier than every caption changing only that attribute."""
    with torch.no_grad():
        truth = caption_logprob(rm, images, [phrase(*x) for x in scenes])
        out = {}
        for a, values in enumerate((list(COLOURS), list(SHAPES), list(COUNTS))):
            ok = torch.ones(len(scenes), dtype=torch.bool)
            for v in values:
                alt = [phrase(*(x[:a] + (v,) + x[a + 1:])) for x in scenes]
                same = torch.tensor([x[a] == v for x in scenes])
                ok &= same | (caption_logprob(rm, images, alt) < truth)
            out[ATTRIBUTES[a]] = ok.float().mean().item()
    return out


def yes_no_accuracy(rm, rng, pool, size, n=96) -> float:
    """Held-out accuracy of one-attribute yes/no questions ("Are the shapes red?"), the model's answer token."""
    examples = []
    while len(examples) < n:
        scene = (*rng.choice(pool), rng.choice(list(COUNTS)))
        ex = vqa_example(scene, render(*scene, rng, size), rng)
        if ex[2] in ("yes", "no"):
            examples.append(ex)
    with torch.no_grad():
        inputs, labels = lm_items(rm, examples)
        first = (labels != -100).int().argmax(1)  # the answer token's position in each row
        hidden = rm.hidden_states(inputs)
        rows = torch.arange(len(examples))
        logp = rm.head_logprobs(hidden[rows, first - 1], [rm.yes_token_id, rm.no_token_id])[0]
    pred = ["yes" if a > b else "no" for a, b in logp.tolist()]
    return sum(p == ex[2] for p, ex in zip(pred, examples)) / n


def warm_up(base_dir, out_dir, steps, batch, lr, size, seed, log, instruction=INSTRUCTION, mix="caption+vqa"):
    """Caption random synthetic images (held-out combinations excluded) and save the checkpoint.

    The vision tower is frozen for the first ``VISION_FROZEN`` fraction of the steps, then trained at
    ``VISION_LR_SCALE`` x lr: its random features already tell colours apart (a linear probe reads them), so
    the language model first learns to read image tokens at all; trained together from the start, the
    drifting vision features kept the captions at chance in our runs.
    """

    rng = random.Random(seed + 17)
    torch.manual_seed(seed)
    rm = RewardModel.from_pretrained(base_dir, device="cpu", dtype=torch.float32)
    model = rm.model
    model.requires_grad_(True)
    model.train()
    # a 5% linear warm-up, then cosine: transformers' schedule, as the reward models below train
    opt, schedule = warmup_optimizer(model, lr, steps, VISION_LR_SCALE)
    pool = combos(ood=False)
    probe_scenes = [(*rng.choice(pool), rng.choice(list(COUNTS))) for _ in range(96)]
    probe_images = [render(*x, rng, size) for x in probe_scenes]
    history, probes, t0 = [], [], time.perf_counter()
    for step in range(steps):
        inputs, labels = lm_items(rm, warmup_examples(rng, pool, size, batch, instruction, mix))
        if step < VISION_FROZEN * steps:  # the vision tower waits (the schedule resets its lr every step)
            opt.param_groups[1]["lr"] = 0.0
        logp = sequence_logprobs(rm, rm.hidden_states(inputs), labels)
        loss = -logp.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": loss.item()})
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            model.eval()
            acc = caption_attribute_accuracy(rm, probe_scenes, probe_images)
            acc["yes_no_vqa"] = yes_no_accuracy(rm, random.Random(seed + 99), pool, size)
            model.train()
            probes.append({"step": step + 1, **acc})
            print(f"  warm-up {step + 1}/{steps}: caption loss {loss.item():.3f}, caption accuracy "
                  + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()) + f" ({time.perf_counter() - t0:.0f} s)",
                  file=log, flush=True)
    model.eval()
    model.requires_grad_(False)
    model.save_pretrained(out_dir, safe_serialization=True)
    rm.tokenizer.save_pretrained(out_dir)
    for name in ("preprocessor_config.json", "processor_config.json"):
        if os.path.isfile(os.path.join(base_dir, name)):
            shutil.copyfile(os.path.join(base_dir, name), os.path.join(out_dir, name))
    return history, probes, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# Reward models


def curve_callback(every, sets, paradigm, store, log):
    """Trainer callback: held-out accuracy on small fixed subsets every ``every`` steps (rank 0 only)."""
    def callback(trainer, step, logs):
        if step % every and step != trainer.config.max_steps:
            return
        trainer.wrapped.eval()
        with torch.no_grad():
            for name, recs in sets.items():
                p, kept = pair_probabilities(trainer.scoring_model(), recs, paradigm, log=None)
                acc, _ = accuracy(p, [recs[i].label for i in kept])
                store.setdefault(name, []).append({"step": step, "accuracy": acc})
        trainer.wrapped.train()
        print(f"  {paradigm} step {step}: loss {logs['loss']:.3f}, held-out accuracy "
              + ", ".join(f"{k} {v[-1]['accuracy']:.3f}" for k, v in store.items()), file=log, flush=True)

    return callback


def train_paradigm(paradigm, base_dir, out_dir, train, sets, cfg, seed, log):
    config = TrainConfig(paradigm=paradigm, finetune="full", learning_rate=cfg["lr"], batch_size=cfg["batch"],
                         max_steps=cfg["steps"], warmup_steps=max(1, cfg["steps"] // 20), lr_schedule="cosine",
                         instruction=cfg["instruction"], seed=seed, progress=False, max_grad_norm=1.0)
    curves = {}
    curve_sets = {k: v[: cfg["curve_pairs"]] for k, v in sets.items()}
    trainer = Trainer(base_dir, config, train, output_dir=out_dir, log=log,
                      callbacks=[curve_callback(cfg["eval_every"], curve_sets, paradigm, curves, log)])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model, _ = load_trained(out_dir, device="cpu")  # score with exactly what was saved
    final = {name: evaluate(model, recs, paradigm=paradigm, log=log)["accuracy"] for name, recs in sets.items()}
    history = [{k: h[k] for k in ("step", "loss", "accuracy")} for h in trainer.state.history]
    return final, seconds, history, curves


def plot(results, path):
    import matplotlib  # optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    warm = results["warmup_history"]
    if warm:
        axes[0].plot([h["step"] for h in warm], smooth([h["loss"] for h in warm], 20), color="k")
    axes[0].set_title("shared warm-up: LM loss")
    axes[0].set_xlabel("step")
    for k, (name, run) in enumerate(results["runs"].items()):
        hist = run["history"]
        axes[1].plot([h["step"] for h in hist], smooth([h["loss"] for h in hist], 20), color=f"C{k}", label=name)
        for ls, split in (("-", "in_domain"), (":", "ood")):
            pts = run["curves"].get(split, [])
            axes[2].plot([p["step"] for p in pts], [p["accuracy"] for p in pts], ls, marker="o", ms=3,
                         color=f"C{k}", label=f"{name} {split}")
    axes[1].set_title("reward-model training loss")
    axes[1].set_xlabel("step")
    axes[1].legend()
    axes[2].axhline(0.5, color="0.6", lw=0.8)
    axes[2].axhline(0.75, color="0.6", lw=0.8, ls="--")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("held-out accuracy (in-domain solid, OOD dotted)")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing in seconds")
    parser.add_argument("--steps", type=int, help="reward-model optimizer steps per paradigm")
    parser.add_argument("--warmup-steps", type=int, help="captioning steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paradigms", default="pairwise,pointwise,regressive")
    parser.add_argument("--workdir", help="keep the checkpoints here (default: a temporary folder)")
    parser.add_argument("--lr", type=float, help="reward-model learning rate")
    parser.add_argument("--instruction", help="the reward models' instruction (default: %(default)s)", default=INSTRUCTION)
    parser.add_argument("--warmup-mix", default="caption+vqa", choices=sorted(WARMUP_MIXES),
                        help="warm-up tasks (default %(default)s; 'caption': captioning and reading only)")
    parser.add_argument("--warmup-dir", help="reuse this warm-up checkpoint instead of captioning again")
    args = parser.parse_args(argv)
    cfg = dict(PRESETS["smoke" if args.smoke else "full"])
    if args.steps:
        cfg["steps"] = args.steps
    if args.lr:
        cfg["lr"] = args.lr
    cfg["instruction"] = args.instruction
    if args.warmup_steps is not None:
        cfg["warmup_steps"] = args.warmup_steps
    log = sys.stderr
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    base = tiny_checkpoint("qwen2_vl", **MODEL)
    rng = random.Random(args.seed)
    ins = cfg["instruction"]
    train = make_pairs(cfg["train_pairs"], rng, cfg["size"], instruction=ins)
    sets = {"in_domain": make_pairs(cfg["test_pairs"], rng, cfg["size"], instruction=ins),
            "ood": make_pairs(cfg["test_pairs"], rng, cfg["size"], ood=True, instruction=ins)}
    work = args.workdir or tempfile.mkdtemp(prefix="rdfast-synthetic-")
    os.makedirs(work, exist_ok=True)
    try:
        if args.warmup_dir:
            warm_dir, warm_hist, warm_probes, warm_seconds = args.warmup_dir, [], [], 0.0
        else:
            print(f"warm-up ({args.warmup_mix}): {cfg['warmup_steps']} steps", file=log)
            warm_dir = os.path.join(work, "warmup")
            os.makedirs(warm_dir, exist_ok=True)
            warm_hist, warm_probes, warm_seconds = warm_up(base, warm_dir, cfg["warmup_steps"], cfg["warmup_batch"],
                                                           cfg["warmup_lr"], cfg["size"], args.seed, log,
                                                           cfg["instruction"], args.warmup_mix)
        runs = {}
        for paradigm in args.paradigms.split(","):
            print(f"{paradigm}: {cfg['steps']} steps of {cfg['batch']} pairs", file=log)
            final, seconds, history, curves = train_paradigm(paradigm, warm_dir, os.path.join(work, paradigm), train,
                                                             sets, cfg, args.seed, log)
            runs[paradigm] = {"final": final, "seconds": seconds, "history": history, "curves": curves}
            print(f"  {paradigm}: in-domain {final['in_domain']:.3f}  ood {final['ood']:.3f}  ({seconds:.0f} s)",
                  file=log, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t_start
    key = {"pairwise": "generative_pairwise_acc", "pointwise": "generative_pointwise_acc", "regressive": "regressive_acc"}
    report = {key[p]: r["final"]["in_domain"] for p, r in runs.items()}
    report["ood"] = {key[p]: r["final"]["ood"] for p, r in runs.items()}
    report.update(
        steps=cfg["steps"], warmup_steps=cfg["warmup_steps"], warmup_mix=args.warmup_mix,
        warmup_tasks=list(WARMUP_MIXES[args.warmup_mix]), seconds=round(seconds, 1),
        seconds_by_stage={"warmup": round(warm_seconds, 1), **{p: round(r["seconds"], 1) for p, r in runs.items()}},
        device=machine(), load_average=load_average(),
        task={"colours": list(COLOURS), "shapes": list(SHAPES), "counts": list(COUNTS), "held_out": sorted(HELD_OUT),
              "image_size": cfg["size"], "train_pairs": cfg["train_pairs"], "test_pairs": cfg["test_pairs"],
              "pairs_per_step": cfg["batch"], "instruction": ins},
        model=MODEL, config=cfg, seed=args.seed,
        curves={p: r["curves"] for p, r in runs.items()},
        loss_curves={p: [[h["step"], round(h["loss"], 5)] for h in r["history"]] for p, r in runs.items()},
        warmup_loss=[[h["step"], round(h["loss"], 5)] for h in warm_hist],
        warmup_caption_accuracy=warm_probes,
    )
    write_json(args.json, report, indent=1)
    png = os.path.splitext(args.json)[0] + ".png"
    plot({"warmup_history": warm_hist, "runs": runs}, png)
    print(f"\n{'paradigm':<22}{'in-domain':>10}{'OOD':>8}{'seconds':>9}")
    for p, r in runs.items():
        print(f"{key[p]:<22}{r['final']['in_domain']:>10.3f}{r['final']['ood']:>8.3f}{r['seconds']:>9.0f}")
    print(f"total {seconds:.0f} s; report {args.json}, curves {png}")
    return report


if __name__ == "__main__":
    main()
