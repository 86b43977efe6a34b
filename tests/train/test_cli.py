"""``rdfast train`` / ``rdfast eval``: a tiny run end to end."""
import json

import pytest

from rdfast.testing import random_images, tiny_checkpoint
from rdfast.train.cli import main as cli_main

from .common import seed_of


def test_cli_train_then_eval(tmp_path, capsys, gen):
    seed = seed_of(gen)
    names = []
    for k, im in enumerate(random_images(12, seed=seed)):
        names.append(f"{k}.png")
        im.save(tmp_path / names[-1])
    lines = [json.dumps({"prompt": f"scene {k}", "image1": names[2 * k], "image2": names[2 * k + 1],
                         "label": [1, 2, "tie"][k % 3]}) for k in range(6)]
    lines.insert(2, json.dumps({"prompt": "bad", "image1": "nope.png", "image2": names[0], "label": 1}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "rm"
    cli_main(["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", str(tmp_path / "train.jsonl"),
              "--val", str(tmp_path / "train.jsonl"), "--output", str(out), "--steps", "2", "--batch-size", "2",
              "--no-progress", "--paradigm", "cot", "--finetune", "full"])
    captured = capsys.readouterr()
    assert "train.jsonl:3: skipped: images1" not in captured.err and "train.jsonl:3: skipped:" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["step"] == 2
    with pytest.raises(SystemExit, match="train.jsonl:3"):
        cli_main(["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", str(tmp_path / "train.jsonl"),
                  "--output", str(tmp_path / "strict"), "--steps", "1", "--strict", "--no-progress"])
    assert not (tmp_path / "strict" / "config.json").exists()
    res = cli_main(["eval", "--model", str(out), "--test", str(tmp_path / "train.jsonl"), "--val",
                    str(tmp_path / "train.jsonl"), "--output", str(tmp_path / "eval.json"), "--device", "cpu"])
    table = capsys.readouterr().out
    assert "acc+ties" in table and res["paradigm"] == "cot" and res["n_pairs"] == 6
    trained = json.loads((out / "eval_results.json").read_text())
    assert res["probabilities"] == trained["probabilities"]

