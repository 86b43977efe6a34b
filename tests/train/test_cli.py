"""``rdfast train`` / ``rdfast eval``: one flag per TrainConfig field, and a tiny run end to end."""
import argparse
import dataclasses
import json

import pytest

from rdfast.testing import random_images, tiny_checkpoint
from rdfast.train import TrainConfig
from rdfast.train.cli import config_from_args, register
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


# ----------------------------------------------------------------------------------------------------
# One flag per TrainConfig field


def parse_train(*flags):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["train", "--model", "m", "--train", "t.jsonl", "--output", "o", *flags])


def test_every_config_field_has_a_flag_with_help():
    """Fails when a TrainConfig field is added without its metadata (help) or is missing from the CLI."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    train = sub.choices["train"]
    flags = {}
    for action in train._actions:
        flags.setdefault(action.dest, []).append(action)
    for f in dataclasses.fields(TrainConfig):
        assert f.name in flags, f"TrainConfig.{f.name} has no rdfast train flag"
        assert f.metadata.get("help") and all(a.help for a in flags[f.name]), f"TrainConfig.{f.name}: no help"
        assert any(f"--{f.name.replace('_', '-')}" in a.option_strings for a in flags[f.name])
    assert config_from_args(parse_train()) == TrainConfig()  # the flags' defaults are the config's


def test_flags_build_the_config_with_compatible_names():
    config = config_from_args(parse_train(
        "--lr", "3e-3", "--steps", "7", "--one-order", "--no-progress", "--bf16", "--adam-betas", "0.8,0.95",
        "--lora-targets", "q_proj,v_proj", "--max-grad-norm", "none", "--micro-batch-size", "2",
        "--batching", "varlen", "--head-learning-rate", "1e-2", "--lora-dropout", "0.1", "--fps", "2"))
    assert config == TrainConfig(learning_rate=3e-3, max_steps=7, both_orders=False, progress=False, bf16=True,
                                 adam_betas=(0.8, 0.95), lora_targets=("q_proj", "v_proj"), max_grad_norm=None,
                                 micro_batch_size=2, batching="varlen", head_learning_rate=1e-2,
                                 lora_dropout=0.1, fps=2.0)
    assert config_from_args(parse_train("--learning-rate", "0.5", "--max-steps", "3", "--no-both-orders")) == \
        TrainConfig(learning_rate=0.5, max_steps=3, both_orders=False)
    with pytest.raises(SystemExit):
        parse_train("--batching", "packed")
    with pytest.raises(SystemExit):
        parse_train("--adam-betas", "0.9")
    with pytest.raises(ValueError, match="num_frames or fps"):
        config_from_args(parse_train("--num-frames", "4", "--fps", "2"))
