"""Loading refuses broken or unsafe checkpoints instead of scoring silently wrong: missing weights that
transformers would initialise at random, non-finite weights or scores, pickled weights, and says once when a
tokenizer has no chat template."""
import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from rdfast import RewardModel
from rdfast.errors import InputError
from rdfast.testing import random_images, tiny_checkpoint


def _copy(tmp_path, name="ckpt"):
    """A private copy of the tiny Qwen2-VL checkpoint (the cached one is shared by every test)."""
    dst = tmp_path / name
    shutil.copytree(tiny_checkpoint("qwen2_vl"), dst)
    return dst


def _edit_weights(directory, edit):
    path = directory / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def _score(rm, seed):
    images = random_images(2, seed=seed)
    return rm.score(images, ["a red house", "a blue tree"])


def test_missing_lm_head_is_an_error_naming_it(tmp_path):
    ckpt = _copy(tmp_path)
    _edit_weights(ckpt, lambda s: s.pop("lm_head.weight"))
    with pytest.raises(InputError, match=r"lm_head\.weight") as info:
        RewardModel.from_pretrained(ckpt, device="cpu")
    assert str(ckpt) in str(info.value)


def test_tied_lm_head_may_be_absent(tmp_path):
    """With tied embeddings the checkpoint rightly holds no lm_head.weight: it is the embedding matrix."""
    ckpt = _copy(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (ckpt / "config.json").write_text(json.dumps(config))
    _edit_weights(ckpt, lambda s: s.pop("lm_head.weight"))
    rm = RewardModel.from_pretrained(ckpt, device="cpu")
    embed = rm.model.get_input_embeddings().weight
    assert torch.equal(rm.model.get_output_embeddings().weight, embed)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_is_an_error_naming_the_tensor(tmp_path, value):
    ckpt = _copy(tmp_path)
    suffix = "layers.0.mlp.up_proj.weight"  # the file's key names differ from the model's (transformers renames)

    def poison(state):
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        (key,) = [k for k in state if k.endswith(suffix) and "visual" not in k]
        flat = state[key].view(-1)
        flat[int(torch.randint(0, flat.numel(), (1,), generator=gen))] = value

    _edit_weights(ckpt, poison)
    with pytest.raises(InputError, match=r"language_model\.layers\.0\.mlp\.up_proj\.weight.*non-finite"):
        RewardModel.from_pretrained(ckpt, device="cpu")


def test_non_finite_score_is_an_error_naming_the_item(monkeypatch):
    """Never a NaN score: whatever makes one (here a patched head), the call fails naming the item."""
    rm = RewardModel.from_pretrained(tiny_checkpoint("qwen2_vl"), device="cpu")
    real = rm.answer_logprobs

    def one_nan(hidden, *answers):
        out = real(hidden, *answers).clone()
        out[1, 0] = float("nan")
        return out

    monkeypatch.setattr(rm, "answer_logprobs", one_nan)
    with pytest.raises(FloatingPointError, match=r"item 1\b"):
        _score(rm, seed=1)
    images = random_images(2, seed=2)
    with pytest.raises(FloatingPointError, match=r"item 1\b"):
        rm.compare(images, images[::-1], ["a", "b"], debias=True)


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    ckpt = _copy(tmp_path)
    state = load_file(ckpt / "model.safetensors")
    torch.save(state, ckpt / "pytorch_model.bin")  # what save_pretrained(safe_serialization=False) wrote
    os.remove(ckpt / "model.safetensors")
    with pytest.raises(InputError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        RewardModel.from_pretrained(ckpt, device="cpu")
    rm = RewardModel.from_pretrained(ckpt, device="cpu", allow_pickle=True)
    reference = RewardModel.from_pretrained(tiny_checkpoint("qwen2_vl"), device="cpu")
    torch.testing.assert_close(_score(rm, seed=3), _score(reference, seed=3), rtol=0, atol=0)


def test_missing_chat_template_warns_once_naming_the_model(tmp_path):
    ckpt = _copy(tmp_path, "no-template")
    os.remove(ckpt / "chat_template.jinja")
    tokenizer_config = json.loads((ckpt / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.warns(UserWarning, match=r"no-template.*no chat template.*USER:"):
        RewardModel.from_pretrained(ckpt, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second load is silent, and so is a model with a template
        rm = RewardModel.from_pretrained(ckpt, device="cpu")
        RewardModel.from_pretrained(tiny_checkpoint("qwen2_vl"), device="cpu")
    assert 0 < float(_score(rm, seed=4)[0]) < 1


def test_cli_refuses_pickled_weights_unless_allow_pickle(tmp_path, capsys):
    from rdfast.cli import main

    ckpt = _copy(tmp_path)
    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "pytorch_model.bin")
    os.remove(ckpt / "model.safetensors")
    random_images(1, seed=5)[0].save(tmp_path / "a.png")
    (tmp_path / "items.jsonl").write_text(json.dumps({"prompt": "a tree", "image": "a.png"}) + "\n")
    argv = ["score", "--model", str(ckpt), "--input", str(tmp_path / "items.jsonl"), "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--output", str(tmp_path / "refused.jsonl")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pytorch_model.bin" in err and "--allow-pickle" in err
    assert len(err.strip().splitlines()) == 1
    main(argv + ["--output", str(tmp_path / "scores.jsonl"), "--allow-pickle"])
    (row,) = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert 0 < row["score"] < 1
