"""The README's main job runs end to end on the embedded tiny model and writes what it says."""
import json

import torch
from PIL import Image

from conftest import load_rm
from rdfast.demo import PROMPTS, run_demo


def test_demo_writes_scores_pairs_and_a_picture(tmp_path, capsys):
    result = run_demo(str(tmp_path))
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
