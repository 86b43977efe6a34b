"""Training on video preference pairs: the JSONL format (folders of frames, image-to-video), the batches,
a tiny training run through the CLI, and reload exactness."""
import io
import json

import torch
from test_video import clips

from conftest import load_rm, save_frames
from rdfast.testing import random_images, tiny_checkpoint
from rdfast.train import (
    Collator,
    PreferenceRecord,
    TrainConfig,
    evaluate,
    load_preferences,
    load_trained,
)
from rdfast.train.cli import main as cli_main
from rdfast.train.module import RewardTrainModule


def seed_of(gen):
    return int(torch.randint(0, 10_000, (1,), generator=gen))


def test_video_lines_are_validated_with_line_numbers(tmp_path, gen):
    a, b = clips(gen, 2, frames=3)
    save_frames(tmp_path / "a", a)
    save_frames(tmp_path / "b", b)
    (tmp_path / "empty").mkdir()
    save_frames(tmp_path / "mixed", [a[0]])
    random_images(1, sizes=((84, 56),), seed=seed_of(gen))[0].save(tmp_path / "mixed" / "001.png")
    random_images(1, seed=seed_of(gen))[0].save(tmp_path / "cond.png")
    good = {"prompt": "a ball rolls", "video1": "a", "video2": "b", "label": 1, "instruction": "t2v"}
    lines = [
        good,
        {**good, "video2": "missing"},
        {**good, "video2": "empty"},
        {**good, "video1": "mixed"},
        {**good, "image1": "cond.png"},
        {**good, "condition_image": "cond.png", "instruction": "i2v", "label": "tie"},
        {**good, "condition_image": "nope.png"},
        {k: v for k, v in good.items() if k != "video2"},
    ]
    path = tmp_path / "videos.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    log = io.StringIO()
    recs = load_preferences(path, log=log)
    assert [r.line for r in recs] == [1, 6]
    assert all(r.kind == "video" for r in recs) and recs[1].condition_image == str(tmp_path / "cond.png")
    assert recs[0].candidates == (str(tmp_path / "a"), str(tmp_path / "b"))
    report = log.getvalue().splitlines()
    expected = {2: "video file not found", 3: "no frame images", 4: "share one size", 5: "not both",
                7: "image file not found", 8: "missing field 'video2'"}
    assert len(report) == len(expected)
    for (number, why), line in zip(sorted(expected.items()), report):
        assert line.startswith(f"{path}:{number}: skipped:") and why in line, line


def test_video_batches_are_the_scorers_inputs(gen):
    """The collator encodes video pairs exactly as ``build_inputs`` does (both orders; i2v with its image)."""
    rm = load_rm("qwen2_vl")
    v = clips(gen, 4, frames=4)
    cond = random_images(1, seed=seed_of(gen), kind="tensor")[0]
    recs = [PreferenceRecord("a ball rolls", video1=v[0], video2=v[1], label=2),
            PreferenceRecord("a cat jumps", video1=v[2], video2=v[3], label=1, condition_image=cond, instruction="i2v")]
    batch = Collator(rm, "pairwise", num_frames=2)(recs)
    assert batch.target.tolist() == [1.0, 0.0, 0.0, 1.0]
    rows = [rm.build_inputs(["a ball rolls"], videos1=[v[0]], videos2=[v[1]], num_frames=2),
            rm.build_inputs(["a ball rolls"], videos1=[v[1]], videos2=[v[0]], num_frames=2),
            rm.build_inputs(["a cat jumps"], videos1=[v[2]], videos2=[v[3]], condition_images=[cond], num_frames=2,
                            instruction="i2v"),
            rm.build_inputs(["a cat jumps"], videos1=[v[3]], videos2=[v[2]], condition_images=[cond], num_frames=2,
                            instruction="i2v")]
    ids = batch.inputs["input_ids"]
    for k, ref in enumerate(rows):
        n = ref["input_ids"].shape[1]
        assert torch.equal(ids[k, -n:], ref["input_ids"][0])  # left padded
    assert batch.inputs["video_grid_thw"][:, 0].eq(1).all()  # 2 frames = one temporal patch per clip
    # the training loss (summed over rows) against plain transformers forwards, log-softmax in float64
    rm.model.requires_grad_(False)
    loss, _ = RewardTrainModule(rm, TrainConfig(paradigm="pairwise"))(batch)
    ref = 0.0
    for t, inputs in zip(batch.target.tolist(), rows):
        with torch.no_grad():
            logp = rm.model(**inputs).logits[0, -1].double().log_softmax(-1)
        ref -= t * logp[rm.yes_token_id] + (1 - t) * logp[rm.no_token_id]
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)  # float32 model


def test_tiny_video_training_run_learns_and_reloads_exactly(tmp_path, gen):
    """rdfast train on a JSONL of video folders, then rdfast eval on the saved directory: the training pairs
    are learned, and the reloaded model reproduces the evaluation bitwise, sampling frames as trained."""
    seed = seed_of(gen)
    g = torch.Generator().manual_seed(seed)
    prompts = ["a red ball rolls", "waves at night", "a dog runs", "snow falls slowly"]
    lines = []
    for k in range(8):
        good, bad = clips(g, 2, frames=4)
        good, bad = 0.5 + 0.5 * good, 0.5 * bad  # learnable from the pixels: the preferred clip is the bright one
        a, b = (bad, good) if k % 2 else (good, bad)
        save_frames(tmp_path / f"v{k}a", a)
        save_frames(tmp_path / f"v{k}b", b)
        lines.append({"prompt": prompts[k % 4], "video1": f"v{k}a", "video2": f"v{k}b", "label": 1 + k % 2,
                      "instruction": ["t2v", "motion"][k % 2]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    cli_main(["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", str(tmp_path / "train.jsonl"),
              "--val", str(tmp_path / "train.jsonl"), "--output", str(out), "--finetune", "full", "--lr", "3e-3",
              "--batch-size", "4", "--steps", "32", "--num-frames", "2", "--no-progress"])
    config = json.loads((out / "rdfast_config.json").read_text())
    assert config["num_frames"] == 2 and config["fps"] is None
    recs = load_preferences(tmp_path / "train.jsonl")
    base = load_trained(tiny_checkpoint("qwen2_vl"))[0]
    base.num_frames = 2
    before = evaluate(base, recs)
    saved = json.loads((out / "eval_results.json").read_text())
    model, paradigm = load_trained(out)
    assert model.num_frames == 2 and paradigm == "pairwise"
    again = evaluate(model, recs)
    assert again["probabilities"] == saved["probabilities"]  # bitwise: the same weights, frames and batches
    # learned the training pairs: P(the preferred clip) rose on average and most pairs are now right
    right = lambda res: [p if r.label == 2 else 1 - p for p, r in zip(res["probabilities"], recs)]
    assert sum(right(again)) > sum(right(before)) + 0.5
    assert again["accuracy"] >= 0.75
    assert (out / "training_curves.png").stat().st_size > 1000
