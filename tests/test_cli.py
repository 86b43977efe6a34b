"""The rdfast command: JSONL in, JSONL out; bad lines reported with their numbers and skipped."""
import io
import json

import torch

from conftest import load_rm, write_images
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
    torch.testing.assert_close(torch.tensor([r["score"] for r in out]), expected, atol=1e-7, rtol=1e-5)


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
