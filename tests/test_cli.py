"""The rdfast command: JSONL or a folder of images in, JSONL or CSV out; bad lines reported and skipped;
every flag of daily use through the command's entry point (``rdfast.cli.main``, the console script)."""
import csv
import io
import json

import pytest
import torch
from PIL import Image

import rdfast
from conftest import load_rm, user_error, write_images
from rdfast import RewardModel
from rdfast.cli import main
from rdfast.score_jsonl import score_file


def test_score_file_skips_bad_lines_and_keeps_the_rest(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    names = write_images(tmp_path, 3, int(torch.randint(0, 10_000, (1,), generator=gen)))
    lines = [
        json.dumps({"prompt": "a red circle", "image1": names[0], "image2": names[1]}),
        "{not json",
        json.dumps({"prompt": "a cat", "image1": names[0], "image2": "missing.png"}),
        json.dumps({"prompt": "", "image1": names[0], "image2": names[2]}),
        json.dumps({"prompt": "yes " * 5000, "image1": names[1], "image2": names[2]}),  # too long for the model
        json.dumps({"prompt": "two dogs", "image1": names[2], "image2": names[1], "id": "keep-me"}),
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    log = io.StringIO()
    n = score_file(rm, "compare", str(tmp_path / "pairs.jsonl"), str(tmp_path / "out.jsonl"), batch_size=4, log=log).scored
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 2 and [r["line"] for r in out] == [1, 6] and out[1]["id"] == "keep-me"
    report = log.getvalue()
    for number, reason in [(2, "Expecting"), (3, "not found"), (4, "non-empty"), (5, "tokens long")]:
        assert f"pairs.jsonl:{number}: skipped" in report and reason in report
    from PIL import Image

    expected = rm.compare(
        images1=[Image.open(tmp_path / names[0]), Image.open(tmp_path / names[2])],
        images2=[Image.open(tmp_path / names[1]), Image.open(tmp_path / names[1])],
        prompts=["a red circle", "two dogs"],
    )
    assert all("score" not in r for r in out)  # compare names its score
    torch.testing.assert_close(torch.tensor([r["p_image2_better"] for r in out]), expected, atol=1e-7, rtol=1e-5)


def test_cli_score_command(tmp_path, capsys):
    from rdfast.testing import tiny_checkpoint

    names = write_images(tmp_path, 2, 11)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"prompt": "a tree", "image": n}) + "\n" for n in names))
    main(["score", "--model", str(tiny_checkpoint("internvl")), "--input", str(tmp_path / "items.jsonl"),
          "--output", str(tmp_path / "scores.jsonl"), "--normalize", "yes_no", "--device", "cpu"])
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == names
    from PIL import Image

    rm = load_rm("internvl", normalize="yes_no")
    expected = rm.score(images=[Image.open(tmp_path / n) for n in names], prompts=["a tree"] * 2)
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), expected, atol=1e-7, rtol=1e-5)
    assert "wrote 2 scores" in capsys.readouterr().out


def _items_file(tmp_path, n, seed):
    names = write_images(tmp_path, n, seed)
    prompts = ["a red circle", "two dogs", "a tree at night"]
    lines = [json.dumps({"prompt": prompts[k % 3], "image": name}) for k, name in enumerate(names)]
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "items.jsonl"


def test_resume_scores_only_what_is_missing(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    src = _items_file(tmp_path, 7, int(torch.randint(0, 10_000, (1,), generator=gen)))
    full = tmp_path / "full.jsonl"
    assert score_file(rm, "score", str(src), str(full), batch_size=3, log=io.StringIO()).scored == 7
    expected = [json.loads(line) for line in full.read_text().splitlines()]
    # A job killed after 3 lines, in the middle of writing the 4th.
    killed = tmp_path / "killed.jsonl"
    kept = full.read_text().splitlines(keepends=True)[:3]
    killed.write_text("".join(kept) + kept[0][:17])
    assert score_file(rm, "score", str(src), str(killed), batch_size=3, log=io.StringIO(), resume=True).scored == 4
    resumed = [json.loads(line) for line in killed.read_text().splitlines()]
    assert [r["line"] for r in resumed] == list(range(1, 8))
    torch.testing.assert_close(torch.tensor([r["score"] for r in resumed]), torch.tensor([r["score"] for r in expected]),
                               atol=1e-7, rtol=1e-5)


def test_torchrun_shards_and_merges_in_input_order(tmp_path, gen):
    import os
    import subprocess
    import sys

    from rdfast.testing import tiny_checkpoint

    src = _items_file(tmp_path, 5, int(torch.randint(0, 10_000, (1,), generator=gen)))
    model = str(tiny_checkpoint("qwen2_vl"))
    single = tmp_path / "single.jsonl"
    main(["score", "--model", model, "--input", str(src), "--output", str(single), "--device", "cpu"])
    merged = tmp_path / "merged.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", port,
           "-m", "rdfast.cli", "score", "--model", model, "--input", str(src), "--output", str(merged),
           "--device", "cpu", "--batch-size", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    a = [json.loads(line) for line in single.read_text().splitlines()]
    b = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [r["line"] for r in b] == [1, 2, 3, 4, 5] and [r["image"] for r in b] == [r["image"] for r in a]
    torch.testing.assert_close(torch.tensor([r["score"] for r in b]), torch.tensor([r["score"] for r in a]),
                               atol=1e-7, rtol=1e-5)
    assert not list(tmp_path.glob("merged.jsonl.rank*"))

# ---- daily use: a folder of images, CSV, what scored each row, the flags --------------------------------------


def _seed(gen):
    return int(torch.randint(0, 10_000, (1,), generator=gen))


def _folder(tmp_path, gen, n=3):
    """A folder of n random images (written out of name order), an unreadable one and a text file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = write_images(folder, n, _seed(gen))
    (folder / "im1_broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image")
    return folder, names


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_a_folder_by_model_name_with_a_prompts_file(tmp_path, gen, capsys):
    folder, names = _folder(tmp_path, gen)
    files = sorted([*names, "im1_broken.png"])  # one prompt per image file, in file-name order
    prompts = {name: f"a photo number {k}" for k, name in enumerate(files)}
    (tmp_path / "prompts.txt").write_text("".join(prompts[f] + "\n" for f in files))
    main(["score", "--model", "tiny:qwen2_vl", "--images", str(folder), "--prompts", str(tmp_path / "prompts.txt"),
          "--output", str(tmp_path / "out.jsonl"), "--instruction", "quality", "--device", "cpu"])
    rows = _jsonl(tmp_path / "out.jsonl")
    assert [r["image"] for r in rows] == sorted(names) and [r["prompt"] for r in rows] == [prompts[n] for n in sorted(names)]
    assert all(r["reward_model"] == "tiny:qwen2_vl" and r["template"] == "rewarddance" and r["instruction"] == "quality"
               and r["answer_words"] == ["yes", "no"] for r in rows)
    rm = load_rm("qwen2_vl")
    expected = rm.score(images=[Image.open(folder / r["image"]) for r in rows], prompts=[r["prompt"] for r in rows],
                        instruction="quality")
    got = torch.tensor([r["score"] for r in rows])
    torch.testing.assert_close(got.log(), expected.log(), atol=1e-5, rtol=0)
    captured = capsys.readouterr()
    assert "im1_broken.png: skipped" in captured.err and "notes.txt" in captured.err
    best = int(got.argmax())
    summary = [line for line in captured.err.splitlines() if line.startswith("rdfast score: 3 scores")]
    assert summary and f"mean {got.double().mean().item():.4g}" in summary[0], captured.err
    assert f"max {got[best].item():.4g} ({rows[best]['image']})" in summary[0]
    assert f"top 3: {rows[best]['image']}" in captured.err


def test_csv_output_holds_the_jsonl_rows(tmp_path, gen, loads):
    folder, names = _folder(tmp_path, gen)
    common = ["score", "--model", "tiny:qwen2_vl", "--images", folder, "--prompt", "a red fox"]
    main([*map(str, common), "--output", str(tmp_path / "rows.jsonl")])
    main([*map(str, common), "--output", str(tmp_path / "rows.csv")])  # the format follows the suffix
    main([*map(str, common), "--output", str(tmp_path / "rows.txt"), "--format", "csv"])
    expected = _jsonl(tmp_path / "rows.jsonl")
    for name in ("rows.csv", "rows.txt"):
        with open(tmp_path / name, newline="") as fh:
            table = list(csv.DictReader(fh))
        assert [r["image"] for r in table] == [r["image"] for r in expected] == sorted(names)
        for got, want in zip(table, expected):
            assert json.loads(got["answer_words"]) == want["answer_words"] == ["yes", "no"]  # lists as JSON
            assert float(got["score"]) == want["score"] and int(got["line"]) == want["line"]
            assert {k: got[k] for k in ("prompt", "reward_model", "template", "instruction", "input_key")} == \
                   {k: want[k] for k in ("prompt", "reward_model", "template", "instruction", "input_key")}


def test_compare_rows_name_their_score_and_older_outputs_resume(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    names = write_images(tmp_path, 3, _seed(gen))
    lines = [{"prompt": f"a cat {k}", "image1": names[0], "image2": names[k]} for k in (1, 2)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    score_file(rm, "compare", str(tmp_path / "pairs.jsonl"), str(tmp_path / "full.jsonl"), log=io.StringIO())
    full = _jsonl(tmp_path / "full.jsonl")
    assert all("p_image2_better" in r and "score" not in r for r in full)
    # an output written before the rename: its first row holds "score"; resuming keeps it, renamed
    old = {k: v for k, v in full[0].items() if k != "p_image2_better"} | {"score": full[0]["p_image2_better"]}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    summary = score_file(rm, "compare", str(tmp_path / "pairs.jsonl"), str(tmp_path / "old.jsonl"), resume=True,
                         log=io.StringIO())
    assert (summary.scored, summary.kept) == (1, 1)
    resumed = _jsonl(tmp_path / "old.jsonl")
    assert [r["p_image2_better"] for r in resumed] == pytest.approx([r["p_image2_better"] for r in full], abs=1e-7)
    assert all("score" not in r for r in resumed)


def test_answer_words_dtype_and_device_map_reach_the_model(tmp_path, gen, monkeypatch):
    folder, names = _folder(tmp_path, gen, n=2)
    real, seen = RewardModel.from_pretrained.__func__, []

    def spy(cls, path, **kwargs):
        seen.append(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(RewardModel, "from_pretrained", classmethod(spy))
    main(["score", "--model", "tiny:qwen2_vl", "--images", str(folder), "--prompt", "a red fox", "--device", "cpu",
          "--output", str(tmp_path / "out.jsonl"), "--answer-words", "no", "yes", "--dtype", "bfloat16",
          "--device-map", "cpu"])
    assert seen[-1]["dtype"] == torch.bfloat16 and seen[-1]["device_map"] == "cpu"
    assert seen[-1]["answer_words"] == ["no", "yes"]
    rows = _jsonl(tmp_path / "out.jsonl")
    assert all(r["answer_words"] == ["no", "yes"] for r in rows)
    # the reward read "no" as its yes word: P("no") of the float32 model, within bfloat16's 1e-2 in log P
    rm = load_rm("qwen2_vl")
    items = rm.encode([r["prompt"] for r in rows], [[Image.open(folder / r["image"]) for r in rows]])
    expected_log = rm.item_logprobs(items)[:, 1]
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]).log(), expected_log, atol=1e-2, rtol=0)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"rdfast {rdfast.__version__}"


def test_a_near_miss_instruction_is_an_error_and_instruction_text_is_taken_as_it_is(tmp_path, gen, loads, capsys):
    folder, names = _folder(tmp_path, gen, n=2)
    base = ["score", "--model", "tiny:qwen2_vl", "--images", folder, "--prompt", "a red fox"]
    for typo, preset in (("aligment", "alignment"), ("Quality", "quality"), ("overal", "overall")):
        err = user_error(capsys, *base, "--output", tmp_path / "o.jsonl", "--instruction", typo)
        assert f"did you mean '{preset}'" in err and "overall, alignment, quality" in err and "--instruction-text" in err
    assert loads == [] and not (tmp_path / "o.jsonl").exists()
    runs = {"text": ["--instruction-text", "aligment"], "words": ["--instruction", "judge the colours only"]}
    for name, flag in runs.items():
        main([*map(str, base), "--output", str(tmp_path / f"{name}.jsonl"), *flag])
        rows = _jsonl(tmp_path / f"{name}.jsonl")
        assert all(r["instruction"] == flag[1] for r in rows)
        expected = load_rm("qwen2_vl").score(images=[Image.open(folder / r["image"]) for r in rows],
                                             prompts=[r["prompt"] for r in rows], instruction=flag[1])
        torch.testing.assert_close(torch.tensor([r["score"] for r in rows]).log(), expected.log(), atol=1e-5, rtol=0)


def test_folder_mistakes_are_one_line_exit_2_before_loading(tmp_path, gen, loads, capsys):
    folder, names = _folder(tmp_path, gen, n=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "two.txt").write_text("one\ntwo\n")
    (tmp_path / "blank.txt").write_text("one\n\ntwo\nthree\n")
    (tmp_path / "taken.jsonl").write_text("keep me\n")
    model = ["score", "--model", "tiny:qwen2_vl"]
    out = ["--output", tmp_path / "o.jsonl"]
    cases = [
        ([*model, "--images", tmp_path / "nope", "--prompt", "x", *out], "no such folder"),
        ([*model, "--images", tmp_path / "two.txt", "--prompt", "x", *out], "is a file"),
        ([*model, "--images", empty, "--prompt", "x", *out], "no image files"),
        ([*model, "--images", folder, *out], "--prompt TEXT or --prompts FILE"),
        ([*model, "--images", folder, "--prompt", " ", *out], "--prompt must not be empty"),
        ([*model, "--images", folder, "--prompts", tmp_path / "two.txt", *out], "2 prompts for 3 image files"),
        ([*model, "--images", folder, "--prompts", tmp_path / "blank.txt", *out], "blank.txt:2: a blank line"),
        ([*model, "--images", folder, "--prompts", tmp_path / "none.txt", *out], "no such file"),
        ([*model, "--images", folder, "--prompt", "x", *out, "--format", "csv", "--resume"], "--format csv"),
        ([*model, "--images", folder, "--prompt", "x", "--output", tmp_path / "taken.jsonl"], "exists"),
        ([*model, "--images", folder, "--prompt", "x", *out, "--answer-words", "yes", "yes"], "must differ"),
        ([*model, "--input", tmp_path / "two.txt", "--prompt", "x", *out], "go with --images"),
    ]
    for argv, what in cases:
        assert what in user_error(capsys, *argv), argv
    assert loads == [] and not (tmp_path / "o.jsonl").exists() and (tmp_path / "taken.jsonl").read_text() == "keep me\n"


def test_resume_refuses_rows_of_another_model(tmp_path, gen, loads, capsys):
    folder, names = _folder(tmp_path, gen, n=2)
    (folder / "notes.txt").unlink()  # its notice is a line of its own
    argv = ["score", "--images", str(folder), "--prompt", "a red fox", "--output", str(tmp_path / "o.jsonl")]
    main([*argv, "--model", "tiny:qwen2_vl"])
    capsys.readouterr()
    before = (tmp_path / "o.jsonl").read_text()
    err = user_error(capsys, *argv, "--model", "tiny:internvl", "--resume")
    assert "reward_model 'tiny:qwen2_vl'" in err and (tmp_path / "o.jsonl").read_text() == before


def test_template_is_passed_to_the_model_and_recorded(tmp_path, gen):
    folder, names = _folder(tmp_path, gen, n=2)
    main(["score", "--model", "tiny:qwen2_vl", "--images", str(folder), "--prompt", "a red fox", "--device", "cpu",
          "--output", str(tmp_path / "out.jsonl"), "--template", "vqascore"])
    rows = _jsonl(tmp_path / "out.jsonl")
    assert all(r["template"] == "vqascore" for r in rows)
    rm = RewardModel.from_pretrained("tiny:qwen2_vl", device="cpu", template="vqascore")
    expected = rm.score(images=[Image.open(folder / r["image"]) for r in rows], prompts=[r["prompt"] for r in rows])
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]).log(), expected.log(), atol=1e-5, rtol=0)


def test_the_installed_console_script_takes_the_daily_flags(tmp_path, gen):
    """The real ``rdfast`` executable (not only ``main``): a folder, CSV out, a template, dtype and device map, and
    ``--version``; the CSV scores equal in-process scoring with that template (fp32, 1e-5 in log P)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "rdfast"
    if not script.exists():
        pytest.skip("the rdfast console script is not installed beside this Python")
    folder, names = _folder(tmp_path, gen, n=2)
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"rdfast {rdfast.__version__}"
    out = tmp_path / "out.csv"
    done = subprocess.run([str(script), "score", "--model", "tiny:qwen2_vl", "--images", str(folder), "--prompt",
                           "a red fox", "--format", "csv", "--output", str(out), "--template", "vqascore",
                           "--dtype", "float32", "--device-map", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == sorted(names) and all(r["template"] == "vqascore" for r in rows)
    rm = RewardModel.from_pretrained("tiny:qwen2_vl", device="cpu", template="vqascore")
    expected = rm.score(images=[Image.open(folder / r["image"]) for r in rows], prompts=[r["prompt"] for r in rows])
    torch.testing.assert_close(torch.tensor([float(r["score"]) for r in rows]).log(), expected.log(), atol=1e-5, rtol=0)
    assert "rdfast score: 2 scores" in done.stderr
