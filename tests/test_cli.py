"""The rdfast command: JSONL in, JSONL out; bad lines reported with their numbers and skipped."""
import io
import json

import torch

from conftest import load_rm
from rdfast.cli import main, score_file
from rdfast.testing import random_images


def write_images(tmp_path, seed, n):
    names = []
    for k, im in enumerate(random_images(n, seed=seed)):
        names.append(f"im{k}.png")
        im.save(tmp_path / names[-1])
    return names


def test_score_file_skips_bad_lines_and_keeps_the_rest(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    names = write_images(tmp_path, int(torch.randint(0, 10_000, (1,), generator=gen)), 3)
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
    n = score_file(rm, "compare", str(tmp_path / "pairs.jsonl"), str(tmp_path / "out.jsonl"), batch_size=4, log=log)
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
    torch.testing.assert_close(torch.tensor([r["score"] for r in out]), expected, atol=1e-7, rtol=1e-5)


def test_cli_score_command(tmp_path, capsys):
    from rdfast.testing import tiny_checkpoint

    names = write_images(tmp_path, 11, 2)
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
