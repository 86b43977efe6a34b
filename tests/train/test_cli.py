"""``rdfast train`` / ``rdfast eval``: one flag per TrainConfig field, and a tiny run end to end."""
import argparse
import dataclasses
import json
import types

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
    with pytest.raises(SystemExit) as stopped:
        cli_main(["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", str(tmp_path / "train.jsonl"),
                  "--output", str(tmp_path / "strict"), "--steps", "1", "--strict", "--no-progress"])
    assert stopped.value.code == 2 and "train.jsonl:3" in capsys.readouterr().err
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


# ----------------------------------------------------------------------------------------------------
# User errors: one line on stderr, exit code 2, before any model is loaded


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a command gets as far as building a Trainer or loading a model."""
    from rdfast.train import cli

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the user error was reported")

    monkeypatch.setattr(cli, "Trainer", loaded)
    monkeypatch.setattr(cli, "load_trained", loaded)


def data_file(folder, n, seed, bad=False):
    names = []
    for k, im in enumerate(random_images(2 * n, seed=seed)):
        names.append(f"{k}.png")
        im.save(folder / names[-1])
    lines = [json.dumps({"prompt": f"scene {k}", "image1": "missing.png" if bad else names[2 * k],
                         "image2": names[2 * k + 1], "label": 1 + k % 2}) for k in range(n)]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "data.jsonl")


def user_error(capsys, argv):
    """Run ``rdfast ARGV``; assert exit code 2 and one line on stderr without a traceback; return the line."""
    from rdfast.cli import main as rdfast_main

    with pytest.raises(SystemExit) as exit_info:
        rdfast_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("rdfast ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", ["missing train", "folder as train", "missing val", "output is a file",
                                  "too few records", "output is the model"])
def test_train_user_errors_are_one_line_before_the_model_loads(tmp_path, capsys, gen, no_model_load, case):
    data = data_file(tmp_path, 3, seed_of(gen))
    argv = {"model": str(tiny_checkpoint("qwen2_vl")), "train": data, "output": str(tmp_path / "out")}
    extra, expect = ["--batch-size", "2"], None
    if case == "missing train":
        argv["train"], expect = str(tmp_path / "nope.jsonl"), "nope.jsonl"
    elif case == "folder as train":
        argv["train"], expect = str(tmp_path), "--train"
    elif case == "missing val":
        extra, expect = [*extra, "--val", str(tmp_path / "val.jsonl")], "val.jsonl"
    elif case == "output is a file":
        argv["output"], expect = data, "--output"
    elif case == "too few records":
        extra, expect = ["--batch-size", "8"], "batch_size=8"
    else:
        argv["output"], expect = argv["model"], "--output"
    line = user_error(capsys, ["train", *(f for k, v in argv.items() for f in (f"--{k}", v)), *extra])
    assert line.startswith("rdfast train: error:") and expect in line, line


@pytest.mark.parametrize("case", ["missing test", "folder as test", "missing output folder", "cuda without cuda",
                                  "no valid pairs"])
def test_eval_user_errors_are_one_line_before_the_model_loads(tmp_path, capsys, gen, no_model_load, case):
    import torch

    data = data_file(tmp_path, 2, seed_of(gen), bad=case == "no valid pairs")
    argv = ["eval", "--model", str(tiny_checkpoint("qwen2_vl")), "--test", data]
    expect = {"missing test": "nope.jsonl", "folder as test": "--test", "missing output folder": "nodir",
              "cuda without cuda": "--device cuda", "no valid pairs": "no valid"}[case]
    if case == "missing test":
        argv[4] = str(tmp_path / "nope.jsonl")
    elif case == "folder as test":
        argv[4] = str(tmp_path)
    elif case == "missing output folder":
        argv += ["--output", str(tmp_path / "nodir" / "results.json")]
    elif case == "cuda without cuda":
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        argv += ["--device", "cuda"]
    line = user_error(capsys, argv)
    assert line.startswith("rdfast eval: error:") and expect in line, line


def test_eval_where_the_model_rejects_every_pair_exits_non_zero(tmp_path, capsys, gen, monkeypatch):
    """Before: it printed a table of n/a and exited 0."""
    from rdfast.train import cli

    data = data_file(tmp_path, 2, seed_of(gen))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("qwen2_vl"))
    model = types.SimpleNamespace(instruction=None, tokenizer=tokenizer)  # never asked to score: all rejected
    monkeypatch.setattr(cli, "load_trained", lambda path, device=None, **kwargs: (model, "pairwise"))
    real = cli.evaluate
    monkeypatch.setattr(cli, "evaluate", lambda model, test, *a, **k: real(model, [], *a, **k))  # all rejected
    line = user_error(capsys, ["eval", "--model", str(tiny_checkpoint("qwen2_vl")), "--test", data])
    assert "no pair" in line and "data.jsonl" in line


def test_train_resume_takes_the_saved_config_and_refuses_a_changed_flag(tmp_path, capsys, gen, monkeypatch):
    """Before: a changed --lr on --resume was silently ignored (and recorded); a fresh run into the folder
    went ahead."""
    from rdfast.train import cli
    from rdfast.train.checkpoints import write_json

    data = data_file(tmp_path, 3, seed_of(gen))
    saved = TrainConfig(learning_rate=3e-3, seed=5, batch_size=1, max_steps=4, finetune="full")
    folder = tmp_path / "out" / "checkpoints" / "checkpoint-00000002"
    folder.mkdir(parents=True)
    write_json({"step": 2, "config": saved.to_dict()}, str(folder / "trainer_state.json"))
    built = []

    class Recorder:
        def __init__(self, model, config, *args, **kwargs):
            built.append(config)

        def train(self, resume=None, overwrite=False):
            return {"step": 4, "output_dir": "out", "eval": None}

    monkeypatch.setattr(cli, "Trainer", Recorder)
    base = ["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", data, "--output", str(tmp_path / "out")]
    line = user_error(capsys, base)
    assert "checkpoint-00000002" in line and "--resume" in line and "--overwrite" in line
    line = user_error(capsys, [*base, "--resume", "--lr", "1e-2"])
    assert "--learning-rate" in line and "0.01" in line and "0.003" in line
    from rdfast.cli import main as rdfast_main

    rdfast_main([*base, "--resume", "--no-progress", "--lr", "3e-3"])  # the saved value, and a display flag
    assert built == [dataclasses.replace(saved, progress=False)]


def test_train_and_eval_refuse_a_pickled_model_unless_allow_pickle(tmp_path, capsys, gen):
    """Before: ``rdfast train``/``eval`` had no --allow-pickle, so a pickled base could not be used at all."""
    import os
    import shutil

    import torch
    from safetensors.torch import load_file

    base = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint("qwen2_vl"), base)
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    os.remove(base / "model.safetensors")
    data = data_file(tmp_path, 2, seed_of(gen))
    train = ["train", "--model", str(base), "--train", data, "--output", str(tmp_path / "out"), "--batch-size", "2",
             "--max-steps", "1", "--finetune", "full", "--no-progress"]
    line = user_error(capsys, train)
    assert "pytorch_model.bin" in line and "--allow-pickle" in line, line
    assert not (tmp_path / "out" / "model.safetensors").exists()
    cli_main([*train, "--allow-pickle"])
    assert (tmp_path / "out" / "model.safetensors").exists()  # the trained model is written as safetensors
    line = user_error(capsys, ["eval", "--model", str(base), "--test", data])
    assert "pytorch_model.bin" in line, line
    cli_main(["eval", "--model", str(base), "--test", data, "--allow-pickle"])
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["all", "2"] for line in out.splitlines()), out  # both pairs scored
