"""The toy reward models' shared warm-up: generic grounding tasks on renders, none a preference.

The recipe of ``bench/train_synthetic.py`` (its renderer is its own, so it keeps its copy), on the toy world:

- caption: "<image> Describe the image." -> "two red circles";
- vqa: one question about ONE attribute, open ("What colour are the shapes?" -> "red") or yes/no ("Are there
  two shapes?" -> "no"), the question before or after the image;
- describe / repeat: inside the reward models' own prompt layouts (instruction, an UNRELATED prompt, one or
  two images) with the yes/no question replaced by "Describe image 1.", "Describe image 2.", "Describe the
  image." or "Repeat the text description.": the model learns to read each image slot and the prompt, the two
  things a judge compares.

Only in-domain prompts are rendered or named (the OOD combinations stay unseen). Why a long mixed warm-up: a
tiny random VLM learns captions quickly but "does this word match this image?" only after a long plateau;
with captioning alone all three reward models stayed at chance within the budget in train_synthetic's runs.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import torch

from .. import prompts as P
from ..encoding import EncodedItem
from ..model import RewardModel
from ..templates import DEFAULT
from ..train import sequence_logprobs
from .data import INSTRUCTION, pil
from .render import render
from .world import COLOURS, COUNT_WORDS, COUNTS, SHAPES, prompts

TASKS = ("caption", "vqa", "describe", "vqa", "repeat", "vqa")  #: one batch cycles through these
CAPTION_QUESTION = "Describe the image."
#: the vision tower waits this fraction of the steps, then trains at this scale of the learning rate: its
#: random features already tell colours apart, so the language model first learns to read image tokens at all
VISION_FROZEN, VISION_LR_SCALE = 0.15, 0.3


def lm_items(rm: RewardModel, examples) -> tuple[dict, torch.Tensor]:
    """Collated chat items (right padded) with next-token labels on the answers (-100 elsewhere).

    examples: (messages, images, answer text); images fill the messages' image slots in order.
    """
    tok = rm.tokenizer
    items, spans = [], []
    for k, (messages, images, answer) in enumerate(examples):
        encs = [rm.family.encode_image(im) for im in images]
        text = rm.family.expand_placeholders(P.render(tok, messages, rm.family.image_placeholder), encs)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        items.append(EncodedItem(ids + target, encs, answer, None, k))
        spans.append((len(ids), len(target)))
    inputs = rm.collate(items, "right")
    labels = torch.full(inputs["input_ids"].shape, -100, dtype=torch.long)
    for row, (start, n) in enumerate(spans):
        labels[row, start : start + n] = inputs["input_ids"][row, start : start + n]
    return inputs, labels


def _with_question(messages, question):
    content = [dict(c) for c in messages[0]["content"]]
    content[-1]["text"] = "\n" + question
    return [{"role": "user", "content": content}]


def vqa_example(prompt, image, rng: np.random.Generator):
    """(messages, [image], answer): one open or yes/no question about one attribute of ``prompt``'s image."""
    attribute = int(rng.integers(3))
    if rng.random() < 0.5:
        question = ("What colour are the shapes?", "What shape are they?", "How many shapes are there?")[attribute]
        answer = (prompt.colour, prompt.shape + ("s" if prompt.count > 1 else ""), COUNT_WORDS[prompt.count])[attribute]
    else:
        truth = bool(rng.random() < 0.5)
        own = (prompt.colour, prompt.shape, prompt.count)[attribute]
        others = [v for v in (tuple(COLOURS), SHAPES, COUNTS)[attribute] if v != own]
        value = own if truth else others[int(rng.integers(len(others)))]
        if attribute == 2:
            question = "Is there one shape?" if value == 1 else f"Are there {COUNT_WORDS[value]} shapes?"
        else:
            question = f"Are the shapes {value}{'s' if attribute == 1 else ''}?"
        answer = "yes" if truth else "no"
    parts = [{"type": "image"}, {"type": "text", "text": "\n" + question}]
    if rng.random() < 0.5:
        parts = [{"type": "text", "text": question + "\n"}, {"type": "image"}]
    return [{"role": "user", "content": parts}], [image], answer


def examples(rng: np.random.Generator, batch: int, instruction: str = INSTRUCTION) -> list:
    """A batch of warm-up examples cycling through TASKS, on fresh in-domain renders."""
    pool = prompts("in_domain")
    out = []
    for k in range(batch):
        scenes = [pool[int(i)] for i in rng.integers(len(pool), size=3)]
        images = [pil(render(s, int(rng.integers(2**31)))) for s in scenes[:2]]
        task, pair = TASKS[k % len(TASKS)], bool(rng.random() < 0.5)
        messages = DEFAULT.messages("image_pair" if pair else "image", scenes[2].text, instruction)  # an unrelated prompt
        if task == "caption":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + CAPTION_QUESTION}]}]
            out.append((messages, images[:1], scenes[0].text))
        elif task == "vqa":
            out.append(vqa_example(scenes[0], images[0], rng))
        elif task == "describe":
            which = int(rng.integers(2)) if pair else 0
            question = f"Describe image {which + 1}." if pair else "Describe the image."
            out.append((_with_question(messages, question), images[: 1 + pair], scenes[which].text))
        else:
            out.append((_with_question(messages, "Repeat the text description."), images[: 1 + pair], scenes[2].text))
    return out


def yes_no_accuracy(rm: RewardModel, seed: int, n: int = 96) -> float:
    """Accuracy of one-attribute yes/no questions on fresh in-domain renders (the model's answer token)."""
    rng, pool, batch = np.random.default_rng([seed, 99]), prompts("in_domain"), []
    while len(batch) < n:
        scene = pool[int(rng.integers(len(pool)))]
        ex = vqa_example(scene, pil(render(scene, int(rng.integers(2**31)))), rng)
        if ex[2] in ("yes", "no"):
            batch.append(ex)
    with torch.no_grad():
        inputs, labels = lm_items(rm, batch)
        first = (labels != -100).int().argmax(1)  # the answer token's position in each row
        hidden = rm.hidden_states(inputs)
        logp = rm.head_logprobs(hidden[torch.arange(n), first - 1], [rm.yes_token_id, rm.no_token_id])[0]
    return sum(("yes" if a > b else "no") == ex[2] for (a, b), ex in zip(logp.tolist(), batch)) / n


def warmup_optimizer(model, lr: float, steps: int, vision_lr_scale: float = VISION_LR_SCALE):
    """AdamW over the whole model, the vision tower at ``vision_lr_scale`` x lr (its random features already tell
    colours apart), with a 5% linear warm-up then cosine (transformers' schedule). Returns (optimizer, schedule)."""
    from transformers import get_scheduler  # heavy

    vision = list(model.model.visual.parameters())
    ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": vision, "lr": lr * vision_lr_scale}],
                            lr=lr, weight_decay=0.0)
    return opt, get_scheduler("cosine", opt, num_warmup_steps=max(1, steps // 20), num_training_steps=steps)


def warm_up(base_dir, out_dir, steps: int, batch: int = 16, lr: float = 1e-3, seed: int = 0,
            instruction: str = INSTRUCTION, log=sys.stderr) -> dict:
    """Train ``base_dir`` on the warm-up tasks for ``steps`` AdamW steps (5% linear warm-up, then cosine) and
    save it to ``out_dir``. Returns {"loss": [[step, loss]...], "yes_no_vqa": [[step, accuracy]...], "seconds"}."""
    rng = np.random.default_rng([seed, 17])
    torch.manual_seed(seed)
    rm = RewardModel.from_pretrained(base_dir, device="cpu", dtype=torch.float32)
    model = rm.model
    model.requires_grad_(True)
    model.train()
    opt, schedule = warmup_optimizer(model, lr, steps)
    losses, probes, t0 = [], [], time.perf_counter()
    for step in range(steps):
        inputs, labels = lm_items(rm, examples(rng, batch, instruction))
        if step < VISION_FROZEN * steps:  # the schedule resets the vision group's lr every step
            opt.param_groups[1]["lr"] = 0.0
        loss = -sequence_logprobs(rm, rm.hidden_states(inputs), labels).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        losses.append([step + 1, round(loss.item(), 5)])
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            model.eval()
            probes.append([step + 1, yes_no_accuracy(rm, seed)])
            model.train()
            if log is not None:
                print(f"  warm-up {step + 1}/{steps}: loss {loss.item():.3f}, yes/no VQA {probes[-1][1]:.2f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=log, flush=True)
    model.eval()
    model.requires_grad_(False)
    model.save_pretrained(out_dir, safe_serialization=True)
    rm.tokenizer.save_pretrained(out_dir)
    for name in ("preprocessor_config.json", "processor_config.json"):
        if os.path.isfile(os.path.join(base_dir, name)):
            shutil.copyfile(os.path.join(base_dir, name), os.path.join(out_dir, name))
    return {"loss": losses, "yes_no_vqa": probes, "seconds": round(time.perf_counter() - t0, 1)}
