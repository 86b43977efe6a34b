"""``rdfast demo --model M``: one reward model on random images, end to end, writing what it says (the untrained
``tiny:`` path; the README's main job on the trained toy models is tested in test_demo_toy.py)."""
import json

import torch
from PIL import Image

from conftest import load_rm, user_error
from rdfast.cli import main
from rdfast.demo.scoring import PROMPTS, run_scoring_demo


def test_demo_writes_scores_pairs_and_a_picture(tmp_path, capsys):
    result = run_scoring_demo(str(tmp_path), model="tiny:qwen2_vl")
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 6  # the seventh line names a missing file: reported and skipped
    assert "items.jsonl:7: skipped" in capsys.readouterr().err
    rm = load_rm("qwen2_vl")
    images = [Image.open(tmp_path / r["image"]) for r in scores]
    expected = rm.score(images=images, prompts=[r["prompt"] for r in scores])
    torch.testing.assert_close(torch.tensor(result["scores"]), expected, atol=1e-7, rtol=1e-5)
    pairs = [json.loads(line) for line in (tmp_path / "pair_scores.jsonl").read_text().splitlines()]
    assert len(pairs) == 5 and all(r["prompt"] in PROMPTS for r in pairs)
    assert Image.open(tmp_path / "scores.png").size[0] > 100
    assert sorted(result["rank"]) == [0, 1, 2, 3]


def test_demo_command_with_a_tiny_model_scores_random_images(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--model", "tiny:qwen2_vl"])
    assert "model: tiny:qwen2_vl" in capsys.readouterr().out
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 6
    assert not (tmp_path / "demo.jsonl").exists()  # the toy demo did not run


def test_toy_demo_flags_with_a_model_are_a_user_error(tmp_path, capsys):
    line = user_error(capsys, "demo", "--out", tmp_path, "--model", "tiny:qwen2_vl", "--samples", "3")
    assert "--samples" in line and "toy demo" in line
    assert not any(tmp_path.iterdir())
