"""pytest-benchmark smoke of ``bench/toy_rm_refresh.py`` (``--smoke``: two ReFL updates, a few samples and pairs,
two fine-tuning steps, from the shipped ``toy:pairwise``). The real figures come from ``python
bench/toy_rm_refresh.py --out DIR --json ...``; this checks the stages, the report and the cache. Nothing here
asserts timings or accuracies.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

# bench/toy_rm_refresh.py (pytest puts this directory on sys.path)
from toy_rm_refresh import main

from rdfast.diffusion.pipelines import load_pipeline
from rdfast.diffusion.testing import torch_threads
from rdfast.train import load_trained


def test_toy_rm_refresh_smoke(benchmark, tmp_path, capsys):
    path, out = tmp_path / "report.json", tmp_path / "stages"
    argv = ["--smoke", "--out", str(out), "--json", str(path)]
    with torch_threads(1):
        report = benchmark.pedantic(main, args=(argv,), rounds=1, iterations=1)
    saved = json.loads(path.read_text())
    assert saved["shipped"] is None and "machine" in saved and saved["seconds"] > 0
    # round 1 saved a generator that loads and that ReFL changed
    moved = load_pipeline(str(out / "round1" / "gen_s0"), device="cpu").transformer.state_dict()
    base = load_pipeline("toy:generator", device="cpu").transformer.state_dict()
    assert moved.keys() == base.keys()
    assert any(not torch.equal(moved[k].float(), base[k].float()) for k in base)
    # drifted pairs come from that generator's samples, and the fine-tuned RM loads as a pairwise RM
    assert saved["data"]["drift"][0]["generator_samples"] > 0 and saved["train_pairs"] > saved["recipe"]["base_pairs"]
    _, paradigm = load_trained(saved["rm"], device="cpu")
    assert paradigm == "pairwise"
    assert saved["before"].keys() == saved["after"].keys()  # the same sets before and after (the smoke's few
    for key in ("in_domain_acc", "ood_acc"):                 # generator pairs may hold no aligned one)
        assert 0.0 <= saved["before"][key] <= 1.0 and 0.0 <= saved["after"][key] <= 1.0
    rm = saved["rm"]
    weights = load_file(f"{rm}/model.safetensors")

    def stamps():  # every stage's files (the reports next to each RM are rewritten by design)
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}

    before = stamps()
    again = main(argv)  # every stage cached: read back, nothing retrained
    assert again["before"] == report["before"] and again["after"] == report["after"]
    assert stamps() == before
    assert all(torch.equal(v, load_file(f"{rm}/model.safetensors")[k]) for k, v in weights.items())
    # another learning rate: a second RM beside the first, on the same cached data
    other = main(argv + ["--lr", "5e-4"])
    assert other["rm"] != rm and other["recipe"]["lr"] == 5e-4 and other["before"] == report["before"]
    assert {p: t for p, t in stamps().items() if p.is_relative_to(rm) or not p.is_relative_to(other["rm"])} == before
    # another generator or initial RM would read this folder's data back as its own: refused, nothing touched
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv[:-1] + [str(tmp_path / "other.json"), "--pairwise", "toy:verifier"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "another recipe" in err and "'toy:pairwise' there, 'toy:verifier' now" in err
    assert "Traceback" not in err and not (tmp_path / "other.json").exists()


def test_toy_rm_refresh_rejects_a_bad_reward_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--smoke", "--pairwise", "toy:nope", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "toy:nope" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "o").exists()


def test_toy_rm_refresh_refuses_shipping_a_smoke(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--smoke", "--ship", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")])
    assert exit_.value.code == 2 and "--ship with --smoke" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "o").exists()
