"""The shipped toy models by their ``toy:`` names wherever the command line takes a model or a pipeline:
``--model`` (score, compare, eval, serve), ``--reward`` (refl), ``--verifier`` (search), ``--pipeline`` (refl, search).
``toy:`` pipelines run at the size they were trained at (64x64); before, refl and search ran them at 512."""
import argparse
import json

import pytest
from PIL import Image

from rdfast import toyworld as tw
from rdfast.cli import main

pytest.importorskip("diffusers")

from rdfast.diffusion import cli as diffusion_cli  # noqa: E402


@pytest.fixture
def renders(tmp_path):
    """Per prompt: an aligned render and one with an attribute wrong, as PNGs; the pairs JSONL (image2 aligned)."""
    rows = []
    for k, p in enumerate(tw.prompts("in_domain")[::9]):
        Image.fromarray(tw.render(p, seed=k)).save(tmp_path / f"good{k}.png")
        Image.fromarray(tw.render_misaligned(p, seed=k)[0]).save(tmp_path / f"bad{k}.png")
        rows.append({"prompt": p.text, "image1": f"bad{k}.png", "image2": f"good{k}.png", "label": 2})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path, rows


def test_score_compare_and_eval_take_toy_reward_models(renders, capsys):
    folder, rows = renders
    items = [{"prompt": r["prompt"], "image": r[k]} for r in rows for k in ("image1", "image2")]
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    main(["score", "--model", "toy:verifier", "--input", str(folder / "items.jsonl"), "--output",
          str(folder / "scores.jsonl")])
    scores = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    assert all(r["reward_model"] == "toy:verifier" for r in scores)
    assert all(good["score"] > bad["score"] for bad, good in zip(scores[::2], scores[1::2]))
    main(["compare", "--model", "toy:pairwise", "--input", str(folder / "pairs.jsonl"), "--output",
          str(folder / "compared.jsonl")])
    compared = [json.loads(line) for line in (folder / "compared.jsonl").read_text().splitlines()]
    assert len(compared) == len(rows) and all(r["reward_model"] == "toy:pairwise" for r in compared)
    result = main(["eval", "--model", "toy:pairwise", "--test", str(folder / "pairs.jsonl"), "--device", "cpu"])
    assert result is None or result["n_pairs"] == len(rows)
    assert "acc" in capsys.readouterr().out


def test_serve_takes_a_toy_model(monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    main(["serve", "--model", "toy:verifier", "--port", "0"])
    assert served["app"] is not None and served["port"] == 0


def _parse(*argv):
    parser = argparse.ArgumentParser(prog="rdfast")
    diffusion_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def test_toy_pipelines_default_to_their_trained_size():
    args = _parse("search", "--pipeline", "toy:generator", "--verifier", "toy:verifier", "--out", "o", "--prompt", "x")
    assert diffusion_cli._size(args) == (tw.SIZE, tw.SIZE)
    args = _parse("refl", "--pipeline", "toy:generator", "--reward", "toy:pairwise", "--out", "o", "--prompts", "p",
                  "--height", "32", "--width", "32")
    assert diffusion_cli._size(args) == (32, 32)  # given sizes still win


def test_search_and_refl_take_toy_names(tmp_path):
    out = tmp_path / "search"
    main(["search", "--pipeline", "toy:generator", "--verifier", "toy:verifier", "--prompt", "two red circles",
          "--out", str(out), "--num-inference-steps", "4", "--n", "2", "--m", "2", "--start-step", "2"])
    assert Image.open(out / "000_best.png").size == (tw.SIZE, tw.SIZE)  # was 512 x 512
    [row] = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert 0 < row["search_reward"] < 1
    (tmp_path / "prompts.txt").write_text("two red circles\none blue square\n")
    out = tmp_path / "refl"
    main(["refl", "--pipeline", "toy:generator", "--reward", "toy:pairwise", "--prompts", str(tmp_path / "prompts.txt"),
          "--out", str(out), "--steps", "1", "--num-inference-steps", "2", "--best-of", "2", "--top-k", "1",
          "--lora-rank", "2", "--samples", "0"])
    [log] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert 0 < log["reward"] < 1 and (out / "final" / "pytorch_lora_weights.safetensors").exists()
