"""``rdfast demo``, the README's main job, on the trained toy models: it runs end to end (at reduced sizes), writes
the picture and the JSONL, its oracle verdicts and rewards are those of the saved images, and the rewards mean
something: aligned images score higher than misaligned ones."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import user_error
from rdfast import toyworld as tw
from rdfast.cli import main
from rdfast.demo import run_toy_demo
from rdfast.diffusion.testing import torch_threads
from rdfast.model import RewardModel

# Two in-domain prompts where the base generator is right about half the time, and the held-out one the demo
# shows. With these seeds the oracle finds 4 of 8 in-domain samples aligned (both kinds present); the test asserts
# both are there rather than trusting it.
PROMPTS = ["one red circle", "one yellow square", "one red triangle"]
SAMPLES = 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    with torch_threads(1):  # deterministic on a busy shared CPU
        result = run_toy_demo(str(out), prompts=PROMPTS, samples=SAMPLES, search_n=2, search_m=2, progress=False)
    rows = [json.loads(line) for line in (out / "demo.jsonl").read_text().splitlines()]
    return out, result, rows


def test_writes_the_picture_and_one_row_per_image(demo):
    out, result, rows = demo
    assert len(rows) == len(PROMPTS) * (SAMPLES + 1)  # the samples and the search's best, per prompt
    assert [r["prompt"] for r in rows if r["source"] == "search"] == PROMPTS
    for prompt in PROMPTS:
        mine = [r for r in rows if r["prompt"] == prompt and r["source"] == "sample"]
        assert [r["seed"] for r in mine] == list(range(SAMPLES))
        assert sorted(r["rank"] for r in mine) == list(range(1, SAMPLES + 1))
        assert [r["ood"] for r in mine] == [tw.Prompt.parse(prompt).ood] * SAMPLES
        assert all(0 <= r["reward"] <= 1 for r in mine)
    picture = Image.open(out / "demo.png")
    assert picture.width >= (SAMPLES + 1) * 128 and picture.height >= len(PROMPTS) * 128  # tiles shown 2x
    summary = json.loads((out / "demo.json").read_text())
    assert summary["complete"] and sorted(summary["files"]) == sorted([r["image"] for r in rows] +
                                                                      ["demo.png", "demo.jsonl"])
    assert rows == result["rows"]


def test_oracle_verdicts_are_those_of_the_saved_images(demo):
    out, _, rows = demo
    for r in rows:
        reading = tw.read(Image.open(out / r["image"]))
        assert reading.text == r["reading"] and reading.matches(r["prompt"]) == r["aligned"], r


def test_rewards_and_ranks_are_the_toy_models_own_on_the_saved_images(demo):
    """Recomputed independently from the PNG files: toy:verifier's P(yes) (fp32, to 1e-5) and toy:pairwise's
    Best-of-N order over each prompt's samples."""
    out, _, rows = demo
    verifier = RewardModel.from_pretrained("toy:verifier", device="cpu")
    pairwise = RewardModel.from_pretrained("toy:pairwise", device="cpu")
    with torch_threads(1):
        images = [Image.open(out / r["image"]).convert("RGB") for r in rows]
        scores = verifier.score(images=images, prompts=[r["prompt"] for r in rows])
        torch.testing.assert_close(scores, torch.tensor([r["reward"] for r in rows]), atol=1e-5, rtol=0)
        for prompt in PROMPTS:
            mine = [r for r in rows if r["prompt"] == prompt and r["source"] == "sample"]
            ranked = pairwise.rank(candidates=[Image.open(out / r["image"]).convert("RGB") for r in mine],
                                   prompt=prompt, top_k=1)
            assert [mine[k]["rank"] for k in ranked.order] == list(range(1, SAMPLES + 1))


def test_aligned_images_score_higher_than_misaligned_ones(demo):
    _, result, rows = demo
    samples = [r for r in rows if r["source"] == "sample"]
    for name, chosen in (("all", samples), ("in_domain", [r for r in samples if not r["ood"]])):
        good = [r["reward"] for r in chosen if r["aligned"]]
        bad = [r["reward"] for r in chosen if not r["aligned"]]
        assert good and bad, f"{name}: the chosen prompts and seeds must give both aligned and misaligned samples"
        assert np.mean(good) > np.mean(bad), name
        assert result["splits"][name]["mean_reward_aligned"] == pytest.approx(np.mean(good))
        assert result["splits"][name]["mean_reward_misaligned"] == pytest.approx(np.mean(bad))


def test_rerun_replaces_its_own_outputs_and_nothing_else(tmp_path, capsys):
    """Through the command: a second run with fewer samples leaves none of the first run's extra images, and a
    file of the user's in the same folder (and in images/) survives both, even one that a demo.json the demo did
    not write lists."""
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "demo.json").write_text(json.dumps({"files": ["notes.txt"]}))
    (tmp_path / "images" / "mine.png").write_bytes(b"mine")
    argv = ["demo", "--out", str(tmp_path), "--prompt", "one red circle", "--steps", "4"]
    with torch_threads(1):
        main([*argv, "--samples", "3"])
        assert (tmp_path / "images" / "one_red_circle_seed2.png").exists()
        main([*argv, "--samples", "2", "--seed", "5"])
    printed = capsys.readouterr()
    assert "verifier mean reward aligned" in printed.out and "sample, score, rank" in printed.err  # progress
    images = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert images == ["mine.png", "one_red_circle_search.png", "one_red_circle_seed5.png", "one_red_circle_seed6.png"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert len((tmp_path / "demo.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("flags, expect", [(["--prompt", "four red circles"], "--prompt"),
                                           (["--samples", "1"], "--samples"),
                                           (["--reward", "toy:nope"], "--reward")])
def test_bad_demo_input_is_one_line_before_anything_is_written(tmp_path, capsys, flags, expect):
    line = user_error(capsys, "demo", "--out", tmp_path / "out", *flags)
    assert expect in line, line
    assert not (tmp_path / "out").exists()


def test_grid_frames_each_tile_by_its_verdict_and_keeps_long_labels_whole(tmp_path):
    from rdfast.toyworld.figures import ALIGNED, MISALIGNED, Tile, titled_grid

    image = tw.render("two red circles", seed=int(np.random.default_rng().integers(1 << 30)))
    label = "a row label much wider than its two tiles " * 3
    path = titled_grid([(label, [Tile(image, ["#1", "aligned"], True), Tile(image, ["#2", "read: x"], False)])],
                       str(tmp_path / "grid.png"), cell_width=140)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[1] > 2 * 140  # widened to the label
    pixels = picture.reshape(-1, 3)
    assert (pixels == ALIGNED).all(axis=1).any() and (pixels == MISALIGNED).all(axis=1).any()
