"""``rdfast refl`` / ``rdfast search`` through rdfast.diffusion.cli.register on tiny models."""
import argparse
import json

import pytest

pytest.importorskip("diffusers")

from rdfast.diffusion import cli  # noqa: E402
from rdfast.diffusion.testing import torch_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def run(argv):
    parser = argparse.ArgumentParser(prog="rdfast")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


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


def test_bad_inputs_fail_before_loading(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'prompt'"):
        cli.read_prompts(str(bad))
    with pytest.raises(FileNotFoundError, match="--prompts"):
        cli.read_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(SystemExit, match="--pipeline"):
        run(["search", "--pipeline", str(tmp_path / "nope"), "--verifier", "tiny:qwen2_vl", "--prompt", "x",
             "--out", str(tmp_path / "o")])
