"""Preference data as the paper makes it (issue 13, deliverable 2): sample the base generator, read every sample
with the oracle, and pair samples of the same prompt (aligned beats misaligned; more attributes right beats
fewer; ties dropped), plus renderer pairs (``data.render_pairs``). Every record's ``extra`` says its ``source``
("generator" or "renderer"), its ``kind`` ("aligned" or "graded"), and ``right``: how many of the prompt's
count, colour and shape each image shows, in image order (an unreadable image has 0 right).

The builder the study's data stage calls::

    build(pipe_or_name="toy:generator", n_generator_pairs=4000, n_renderer_pairs=4000, seed=0, log=sys.stderr, *,
          samples_per_prompt=64, test_samples_per_prompt=16, ood_samples_per_prompt=16, n_test_pairs=200, graded=0.25,
          steps=generator.SAMPLE_STEPS, batch=32) -> PreferenceData
    save(data, folder)   # folder/images.safetensors (uint8 generator samples) + folder/pairs.json (metadata)
    load(folder) -> PreferenceData        # renderer pairs are re-rendered from their recorded prompts and seeds

    data.train            # PreferenceRecords: generator pairs, then renderer pairs (the Trainer shuffles)
    data.test_generator   # held-out generator pairs: other samples (disjoint seeds) of the in-domain prompts
    data.test_generator_ood  # generator pairs on the held-out (OOD) prompts: test only, never in ``train``
    data.info             # counts, base alignment of the samples, attribute histogram, seconds

Training pairs come from in-domain prompts only, and a sample the oracle reads as a held-out (OOD) colour-shape
combination is dropped from them, so no training pair shows an OOD combination; OOD prompts are sampled for
``test_generator_ood`` alone. The same (pipe, arguments, thread count)
give the same data: noise seeds come from ``numpy.random.default_rng([seed, ...])`` and batches are fixed.
The defaults sample 27 x (64 + 16) + 9 x 16 = 2304 images: the study's 5-minute data stage on one thread, with room
(``info["sample_cpu_seconds_per_image"]`` reports the cost; ``bench/toy_reward_models.py --preference`` records
``info`` in its report).
``SMOKE`` is a plumbing-only size (seconds).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from ..diffusion.pipelines import load_pipeline
from ..train import PreferenceRecord
from .data import INSTRUCTION, pil, render_pairs
from .generator import SAMPLE_STEPS, sample
from .oracle import Reading, as_uint8, read
from .render import render
from .world import OOD_COMBOS, Prompt, prompts

FORMAT = 1  #: pairs.json's format version
#: build() keyword arguments for a run that checks plumbing only (99 images of 2 Euler steps: a few pairs or none)
SMOKE = dict(n_generator_pairs=16, n_renderer_pairs=16, samples_per_prompt=2, test_samples_per_prompt=1,
             ood_samples_per_prompt=2, n_test_pairs=4, steps=2)
_STREAMS = {"train": 0, "test": 1, "pairs": 2, "test_pairs": 3, "ood": 4, "ood_pairs": 5}  # independent rng streams per use


@dataclasses.dataclass
class PreferenceData:
    train: list  #: PreferenceRecords, generator then renderer pairs
    test_generator: list  #: held-out generator PreferenceRecords (one order each; ``data.both_orders`` mirrors)
    info: dict  #: what was sampled and how it was labelled
    images: np.ndarray = dataclasses.field(default=None, repr=False)  #: the samples generator pairs index (uint8)
    test_generator_ood: list = dataclasses.field(default_factory=list)  #: generator pairs on OOD prompts (test)

    def digest(self) -> str:
        """A short fingerprint of the pairs (prompts, labels, metadata), for caches built on this data."""
        text = json.dumps([_meta(r) for r in self.train + self.test_generator + self.test_generator_ood], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def attributes_right(reading: Reading, prompt: "Prompt | str") -> int:
    """How many of the prompt's count, colour and shape the reading shows; 0 when the image is unreadable."""
    return reading.attributes_right(prompt) if reading.readable else 0


def shows_ood(reading: Reading) -> bool:
    """True when the oracle reads a held-out colour-shape combination."""
    return (reading.colour, reading.shape) in OOD_COMBOS


def candidate_pairs(right: list[int]) -> dict[str, list[tuple[int, int]]]:
    """All (winner, loser) index pairs among one prompt's samples with ``right`` attributes each:
    "aligned" (3 right against fewer) and "graded" (both misaligned, more right against fewer). Ties are dropped."""
    out = {"aligned": [], "graded": []}
    for i, a in enumerate(right):
        for j, b in enumerate(right):
            if a > b:
                out["aligned" if a == 3 else "graded"].append((i, j))
    return out


def pick_pairs(groups: list[dict], n: int, graded: float, rng: np.random.Generator) -> list[tuple[int, str, int, int]]:
    """``n`` distinct (group, kind, winner, loser) from per-prompt ``candidate_pairs``, prompts taken in turn
    (so each prompt contributes about equally), a fraction ``graded`` of "graded" kind where available."""
    pools = [{k: [tuple(p) for p in rng.permutation(v)] if v else [] for k, v in g.items()} for g in groups]
    chosen, turn = [], 0
    while len(chosen) < n and any(p["aligned"] or p["graded"] for p in pools):
        g = turn % len(pools)
        turn += 1
        kind = "graded" if rng.random() < graded else "aligned"
        if not pools[g][kind]:
            kind = "aligned" if kind == "graded" else "graded"
        if pools[g][kind]:
            win, lose = pools[g][kind].pop()
            chosen.append((g, kind, int(win), int(lose)))
    return chosen


def _sample(pipe, texts: list[str], seeds: list[int], steps: int, batch: int, log, desc: str) -> np.ndarray:
    """uint8 [N, 64, 64, 3] samples of ``texts`` from noise ``seeds``, in fixed batches, with a progress bar."""
    out = []
    with tqdm(total=len(texts), desc=desc, unit="image", file=log, disable=log is None) as bar:
        for start in range(0, len(texts), batch):
            images = sample(pipe, texts[start:start + batch], seeds[start:start + batch], steps=steps, batch=batch)
            out += [as_uint8(im) for im in images]
            bar.update(len(images))
    return np.stack(out) if out else np.zeros((0, 64, 64, 3), np.uint8)


def _generator_records(images: np.ndarray, image_index: list[int], pool: list[Prompt], prompt_of: list[Prompt],
                       seeds: list[int], readings: list[Reading], n: int, graded: float,
                       rng: np.random.Generator) -> list:
    """``n`` generator pairs among the samples at rows ``image_index`` of ``images`` (row k shows prompt_of[k]),
    pairs within each prompt of ``pool``."""
    per_prompt = [[k for k in image_index if prompt_of[k] == p] for p in pool]
    right = {k: attributes_right(readings[k], prompt_of[k]) for k in image_index}
    picks = pick_pairs([candidate_pairs([right[k] for k in ks]) for ks in per_prompt], n, graded, rng)
    records = []
    for g, kind, win, lose in picks:
        good, bad = per_prompt[g][win], per_prompt[g][lose]
        candidate_wins = bool(rng.random() < 0.5)  # which side the preferred image takes
        first, second = (bad, good) if candidate_wins else (good, bad)
        records.append(_generator_record(pool[g], images, first, second, 2 if candidate_wins else 1, kind,
                                         [right[first], right[second]], [seeds[first], seeds[second]],
                                         [readings[first], readings[second]]))
    return records


def _generator_record(prompt: Prompt, images: np.ndarray, first: int, second: int, label: int, kind: str, right,
                      seeds, readings, instruction: str = INSTRUCTION) -> PreferenceRecord:
    return PreferenceRecord(prompt.text, pil(images[first]), pil(images[second]), label, instruction=instruction, extra={
        "source": "generator", "kind": kind, "split": "ood" if prompt.ood else "in_domain", "right": list(right),
        "images": [first, second],
        "seeds": list(seeds), "readings": [_reading_json(r) for r in readings]})


def _reading_json(reading: Reading):
    return [reading.count, reading.colour, reading.shape]


def _fresh_seeds(rng: np.random.Generator, n: int, taken: set) -> list[int]:
    """``n`` distinct noise seeds from ``rng``, none in ``taken`` (which grows by them)."""
    out = []
    while len(out) < n:
        for value in rng.integers(0, 2**31, size=n - len(out)).tolist():
            if value not in taken:
                taken.add(value)
                out.append(value)
    return out


def build(pipe_or_name="toy:generator", n_generator_pairs: int = 4000, n_renderer_pairs: int = 4000, seed: int = 0,
          log=sys.stderr, *, samples_per_prompt: int = 64, test_samples_per_prompt: int = 16,
          ood_samples_per_prompt: int = 16, n_test_pairs: int = 200, graded: float = 0.25, steps: int | None = None,
          batch: int = 32) -> PreferenceData:
    """The study's preference data (see the module docstring). ``pipe_or_name``: a toy FluxPipeline or a name for
    ``rdfast.diffusion.pipelines.load_pipeline`` (loaded on the CPU). Fewer generator pairs than asked come back
    when the samples hold fewer distinct untied pairs (``info`` says how many). ``n_test_pairs`` applies to the
    in-domain and the OOD held-out generator pairs each."""
    for name, value in (("n_generator_pairs", n_generator_pairs), ("n_renderer_pairs", n_renderer_pairs),
                        ("samples_per_prompt", samples_per_prompt), ("test_samples_per_prompt", test_samples_per_prompt),
                        ("ood_samples_per_prompt", ood_samples_per_prompt), ("n_test_pairs", n_test_pairs),
                        ("batch", batch)):
        if not isinstance(value, int) or value < (1 if name == "batch" else 0):
            raise ValueError(f"{name}={value!r} must be a non-negative integer (batch: positive)")
    if not 0.0 <= graded <= 1.0:
        raise ValueError(f"graded={graded!r} must lie in [0, 1]")
    if isinstance(pipe_or_name, (str, os.PathLike)):
        pipe_or_name = load_pipeline(os.fspath(pipe_or_name), device="cpu")
    steps = steps or SAMPLE_STEPS
    wall, cpu = time.perf_counter(), time.process_time()
    seed = int(seed) & 0xFFFFFFFF
    pools = {"train": prompts("in_domain"), "test": prompts("in_domain"), "ood": prompts("ood")}
    per_prompt = {"train": samples_per_prompt, "test": test_samples_per_prompt, "ood": ood_samples_per_prompt}
    taken, rows, prompt_of, seeds = set(), {}, [], []
    for part, pool in pools.items():  # each prompt in turn; seeds disjoint across parts
        n = len(pool) * per_prompt[part]
        rows[part] = range(len(seeds), len(seeds) + n)
        prompt_of += [pool[k % len(pool)] for k in range(n)]
        seeds += _fresh_seeds(np.random.default_rng([seed, 13, _STREAMS[part]]), n, taken)
    images = _sample(pipe_or_name, [p.text for p in prompt_of], seeds, steps, batch, log, "generator samples")
    sample_seconds = time.process_time() - cpu
    readings = [read(im) for im in images]
    right = [attributes_right(r, p) for r, p in zip(readings, prompt_of)]

    def pairs(part, n, stream, keep=lambda k: True):
        index = [k for k in rows[part] if keep(k)]
        return _generator_records(images, index, pools[part], prompt_of, seeds, readings, n, graded,
                                  np.random.default_rng([seed, 13, _STREAMS[stream]]))

    in_domain = lambda k: not shows_ood(readings[k])  # noqa: E731  (no OOD combination in training or ID tests)
    train = pairs("train", n_generator_pairs, "pairs", in_domain)
    test = pairs("test", n_test_pairs, "test_pairs", in_domain)
    test_ood = pairs("ood", n_test_pairs, "ood_pairs")
    renders = render_pairs(n_renderer_pairs, "in_domain", seed * 10 + 5, graded)
    aligned = {part: round(float(np.mean([right[k] == 3 for k in r])), 4) if len(r) else None for part, r in rows.items()}
    info = {
        "seed": seed, "steps": steps, "batch": batch, "samples_per_prompt": samples_per_prompt,
        "test_samples_per_prompt": test_samples_per_prompt, "ood_samples_per_prompt": ood_samples_per_prompt,
        "graded": graded, "instruction": INSTRUCTION, "generator_samples": len(images),
        "dropped_ood_readings": sum(shows_ood(readings[k]) for part in ("train", "test") for k in rows[part]),
        "base_alignment": aligned["train"], "test_alignment": aligned["test"], "ood_alignment": aligned["ood"],
        "attributes_right_histogram": {part: [[right[k] for k in r].count(v) for v in range(4)]
                                       for part, r in rows.items()},
        "unreadable": sum(not r.readable for r in readings),
        "generator_pairs": len(train), "renderer_pairs": len(renders), "test_generator_pairs": len(test),
        "test_generator_ood_pairs": len(test_ood),
        "kinds": {src: {k: sum(r.extra["kind"] == k for r in recs) for k in ("aligned", "graded")}
                  for src, recs in (("generator", train), ("renderer", renders), ("test_generator", test),
                                    ("test_generator_ood", test_ood))},
        "sample_cpu_seconds_per_image": round(sample_seconds / max(1, len(images)), 4),
        "cpu_seconds": round(time.process_time() - cpu, 1), "seconds": round(time.perf_counter() - wall, 1),
        "torch_threads": torch.get_num_threads(),
    }
    data = PreferenceData(train + renders, test, info, images, test_ood)
    if log is not None:
        print(f"preference data: {len(train)} generator + {len(renders)} renderer pairs, {len(test)} + {len(test_ood)} "
              f"held-out generator pairs (in-domain + OOD prompts); base alignment {info['base_alignment']} "
              f"({info['seconds']} s)", file=log, flush=True)
    return data


def _meta(rec: PreferenceRecord) -> dict:
    return {"prompt": rec.prompt, "label": rec.label, "instruction": rec.instruction, "extra": rec.extra}


def save(data: PreferenceData, folder) -> str:
    """Write ``data`` to ``folder`` (replaced whole, atomically): images.safetensors holds the generator samples
    the pairs index (uint8 [N, 64, 64, 3]), pairs.json the records' metadata and ``info``. No pickle."""
    from safetensors.torch import save_file  # heavy

    folder = os.fspath(folder)
    images = data.images if data.images is not None else np.zeros((0, 64, 64, 3), np.uint8)
    if any(r.extra["source"] == "generator" for r in data.train + data.test_generator + data.test_generator_ood) \
            and not len(images):
        raise ValueError("save() needs the generator samples the pairs index (data.images)")
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({"generator": torch.from_numpy(np.ascontiguousarray(images))}, os.path.join(tmp, "images.safetensors"))
    with open(os.path.join(tmp, "pairs.json"), "w", encoding="utf-8") as fh:
        json.dump({"format": FORMAT, "info": data.info, "digest": data.digest(),
                   "train": [_meta(r) for r in data.train], "test_generator": [_meta(r) for r in data.test_generator],
                   "test_generator_ood": [_meta(r) for r in data.test_generator_ood]},
                  fh, indent=0)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _record(meta: dict, images: np.ndarray) -> PreferenceRecord:
    extra = meta["extra"]
    if extra["source"] == "generator":
        first, second = extra["images"]
        image1, image2 = pil(images[first]), pil(images[second])
    elif extra["source"] == "renderer":
        good, bad = pil(render(extra["chosen"], extra["seeds"][0])), pil(render(extra["rejected"], extra["seeds"][1]))
        image1, image2 = (bad, good) if meta["label"] == 2 else (good, bad)
    else:
        raise ValueError(f"a pair's source {extra['source']!r} is not 'generator' or 'renderer'")
    return PreferenceRecord(meta["prompt"], image1, image2, meta["label"], instruction=meta["instruction"], extra=extra)


def load(folder) -> PreferenceData:
    """The PreferenceData saved in ``folder`` by ``save``."""
    from safetensors.torch import load_file  # heavy

    folder = os.fspath(folder)
    path = os.path.join(folder, "pairs.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} holds no preference data (pairs.json is missing)")
    with open(path, encoding="utf-8") as fh:
        saved = json.load(fh)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{path} has format {saved.get('format')!r}; this rdfast reads format {FORMAT}")
    images = load_file(os.path.join(folder, "images.safetensors"))["generator"].numpy()
    return PreferenceData([_record(m, images) for m in saved["train"]],
                          [_record(m, images) for m in saved["test_generator"]], saved["info"], images,
                          [_record(m, images) for m in saved.get("test_generator_ood", [])])
