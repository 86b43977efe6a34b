"""``rdfast refl`` / ``rdfast search`` through rdfast.diffusion.cli.register on tiny models."""
import argparse
import json

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from rdfast.diffusion import cli  # noqa: E402

from .common import random_seed  # noqa: E402


def run(argv):
    cli.main(argv)


def test_register_adds_both_subcommands():
    parser = argparse.ArgumentParser(prog="rdfast")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    assert {"refl", "search"} <= set(sub.choices)
    args = parser.parse_args(["search", "--pipeline", "p", "--verifier", "v", "--out", "o", "--prompt", "x"])
    assert args.n == 4 and args.m == 4 and args.delta_f == 1 and args.delta_b == 2


def test_search_command_writes_tree_and_images(tmp_path):
    out = tmp_path / "search"
    run(["search", "--pipeline", "tiny:flux", "--verifier", "tiny:qwen2_vl", "--prompt", "a red fox",
         "--prompt", "a blue car", "--out", str(out), "--num-inference-steps", "4", "--n", "2", "--m", "2",
         "--start-step", "2", "--baseline"])
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red fox", "a blue car"]
    for i, row in enumerate(rows):
        assert row["nfe_bon"] <= row["nfe_search"]
        # the baseline gets equal total calls: denoiser + verifier, never more than search's
        assert row["nfe_bon"] + row["verifier_calls_bon"] <= row["nfe_search"] + row["verifier_calls_search"]
        assert row["bon_k"] == (row["nfe_search"] + row["verifier_calls_search"]) // (4 + 1)
        for suffix in ("_best.png", "_bon.png", "_tree.json", "_tree.png"):
            assert (out / f"{i:03d}{suffix}").exists()
        tree = json.loads((out / f"{i:03d}_tree.json").read_text())
        assert tree["nfe"]["denoiser"] == row["nfe_search"] == tree["config"]["nfe_formula"]


def test_refl_command_trains_and_saves(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red fox"}\n\n{"prompt": "a cat on a chair"}\n')
    out = tmp_path / "refl"
    run(["refl", "--pipeline", "tiny:flux", "--reward", "tiny:qwen2_vl", "--prompts", str(prompts), "--out", str(out),
         "--steps", "2", "--num-inference-steps", "4", "--best-of", "2", "--top-k", "1", "--lora-rank", "2"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(0 < r["reward"] < 1 for r in log)
    assert (out / "final" / "pytorch_lora_weights.safetensors").exists()
    summary = json.loads((out / "before_after.json").read_text())
    rows = summary["prompts"]
    assert [r["prompt"] for r in rows] == ["a red fox", "a cat on a chair"]
    assert all(0 < r[k] < 1 for r in rows for k in ("before", "after"))
    assert summary["mean_after"] == pytest.approx(sum(r["after"] for r in rows) / 2)
    grid = Image.open(out / "before_after.png")
    assert grid.width >= 2 * 32 and grid.height >= 2 * 32  # two rows (prompts) of before | after


def test_bad_inputs_fail_before_loading(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'prompt'"):
        cli.read_prompts(str(bad))
    with pytest.raises(FileNotFoundError, match="--prompts"):
        cli.read_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(SystemExit) as exit_info:
        run(["search", "--pipeline", str(tmp_path / "nope"), "--verifier", "tiny:qwen2_vl", "--prompt", "x",
             "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--pipeline" in err and "nope" in err  # a user error: one line, exit 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        run(["search", "--pipeline", "tiny:flux", "--verifier", "tiny:nofamily", "--prompt", "x",
             "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "--verifier" in capsys.readouterr().err


def test_video_commands_on_tiny_wan(tmp_path):
    """``--pipeline tiny:wan``: search saves the best video (frame strip PNG + GIF), refl trains on videos."""
    out = tmp_path / "search"
    run(["search", "--pipeline", "tiny:wan", "--verifier", "tiny:qwen2_vl", "--prompt", "a red fox", "--out", str(out),
         "--num-inference-steps", "3", "--num-frames", "5", "--n", "2", "--m", "2", "--start-step", "1",
         "--instruction", "motion", "--rm-frames", "3"])
    row = json.loads((out / "summary.jsonl").read_text())
    tree = json.loads((out / "000_tree.json").read_text())
    # CFG: 2 evaluations per step; N * start + two rounds of N * M branches over 2 steps each
    assert row["nfe_search"] == tree["nfe"]["denoiser"] == tree["config"]["nfe_formula"] == 2 * (2 * 1 + 2 * (2 * 2 * 2))
    from PIL import Image

    assert Image.open(out / "000_best.png").size == (5 * 32, 32)  # 5 frames side by side
    with Image.open(out / "000_best.gif") as gif:
        assert gif.n_frames == 5
    refl_out, prompts = tmp_path / "refl", tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    run(["refl", "--pipeline", "tiny:wan", "--reward", "tiny:qwen2_vl", "--prompts", str(prompts), "--out",
         str(refl_out), "--steps", "1", "--num-inference-steps", "3", "--best-of", "2", "--top-k", "1",
         "--lora-rank", "2"])
    log = [json.loads(line) for line in (refl_out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and 0 < log[0]["reward"] < 1
    config = json.loads((refl_out / "final" / "refl_config.json").read_text())
    assert config["num_frames"] == 9  # tiny:wan's default
    with pytest.raises(ValueError, match="num_frames is for video pipelines"):
        run(["search", "--pipeline", "tiny:flux", "--verifier", "tiny:qwen2_vl", "--prompt", "x", "--out",
             str(tmp_path / "o"), "--num-frames", "5"])


def test_pickled_pipeline_is_refused_unless_allow_pickle(tmp_path, capsys):
    import shutil

    from rdfast.diffusion.testing import tiny_pipeline, tiny_pipeline_dir

    pipe_dir = tmp_path / "flux"
    shutil.copytree(tiny_pipeline_dir("flux"), pipe_dir)
    shutil.rmtree(pipe_dir / "transformer")
    tiny_pipeline("flux").transformer.save_pretrained(pipe_dir / "transformer", safe_serialization=False)
    argv = ["search", "--pipeline", str(pipe_dir), "--verifier", "tiny:qwen2_vl", "--prompt", "a red fox",
            "--num-inference-steps", "3", "--n", "1", "--m", "1", "--start-step", "1", "--delta-f", "1",
            "--delta-b", "2", "--height", "32", "--width", "32"]
    with pytest.raises(SystemExit) as exit_info:
        run(argv + ["--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "transformer" in err and "--allow-pickle" in err
    run(argv + ["--out", str(tmp_path / "allowed"), "--allow-pickle"])
    assert (tmp_path / "allowed" / "summary.jsonl").exists()


@pytest.mark.parametrize("command", ["search", "refl"])
def test_special_token_prompts_are_refused_before_any_sampling(command, tmp_path, capsys, monkeypatch):
    """Before: search sampled a whole round (refl: loaded the pipeline) before the verifier refused the prompt."""
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("the pipeline loaded first"))
    (tmp_path / "prompts.txt").write_text("a dog\na cat<|im_end|>\n")
    given = ["--verifier", "tiny:qwen2_vl", "--prompt", "a cat<|im_end|>"] if command == "search" else \
        ["--reward", "tiny:qwen2_vl", "--prompts", str(tmp_path / "prompts.txt")]
    with pytest.raises(SystemExit) as exit_info:
        run([command, "--pipeline", "tiny:sd", *given, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    index = "prompts[0]" if command == "search" else "prompts[1]"
    assert exit_info.value.code == 2 and index in err and "<|im_end|>" in err, err
    assert "Traceback" not in err


def test_refl_ema_saves_the_average_of_the_trained_weights(tmp_path, capsys):
    """--ema-decay d: OUT/final holds ema_2 = d^2 * w_0 + d(1-d) * w_1 + (1-d) * w_2 of the weights w_k after update k,
    read from a run without EMA that saved every update (same seed, so the same updates). LoRA B starts at zero,
    so the check uses the B matrices: (1-d) * (d * B_1 + B_2). A bad decay is one line, exit 2, before loading."""
    from safetensors.torch import load_file

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na cat on a chair\n")
    common = ["refl", "--pipeline", "tiny:flux", "--reward", "tiny:qwen2_vl", "--prompts", str(prompts), "--steps", "2",
              "--num-inference-steps", "4", "--best-of", "2", "--top-k", "1", "--lora-rank", "2", "--lr", "1e-2",
              "--samples", "0", "--seed", str(random_seed())]
    run(common + ["--out", str(tmp_path / "plain"), "--save-every", "1"])
    run(common + ["--out", str(tmp_path / "ema"), "--ema-decay", "0.5"])
    name = "pytorch_lora_weights.safetensors"
    w1, w2 = (load_file(tmp_path / "plain" / step / name) for step in ("step-1", "step-2"))
    ema = load_file(tmp_path / "ema" / "final" / name)
    b_keys = [k for k in w2 if "lora_B" in k]
    assert b_keys and any(w2[k].abs().max() > 0 for k in b_keys)  # the updates moved B
    for k in b_keys:
        torch.testing.assert_close(ema[k], 0.5 * (0.5 * w1[k] + w2[k]), atol=1e-6, rtol=0, msg=k)  # float32
    assert json.loads((tmp_path / "ema" / "final" / "refl_config.json").read_text())["ema_decay"] == 0.5
    with pytest.raises(SystemExit) as exit_info:
        run(common + ["--out", str(tmp_path / "bad"), "--ema-decay", "1.5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--ema-decay" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
