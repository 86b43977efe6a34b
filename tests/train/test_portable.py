"""A trained LoRA reward model records its base model as it was given (hub id, tiny:NAME, or a path relative to
the output), so the directory loads elsewhere, or fails naming the missing base; ``base_model=`` overrides it.
Broken adapters and regressive heads are errors naming the tensor."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rdfast import RewardModel
from rdfast.errors import InputError
from rdfast.loading import record_base_model
from rdfast.reward_config import RewardConfig
from rdfast.testing import random_images, tiny_checkpoint
from rdfast.train import TrainConfig
from rdfast.train.export import save_model
from rdfast.train.regressive import HEAD_FILE, RegressiveHead, RegressiveRewardModel

pytest.importorskip("peft")


def _seed():
    return int.from_bytes(os.urandom(4), "little")


def _lora_run(out, base_path, base_model=None, paradigm="pointwise"):
    """Export a LoRA reward model with random (non-zero) adapter weights; returns the merged in-memory model."""
    from peft import LoraConfig, get_peft_model

    rm = RewardModel.from_pretrained(base_path, device="cpu")
    peft_model = get_peft_model(rm.model, LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    gen = torch.Generator().manual_seed(_seed())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    head = RegressiveHead(rm.model.get_output_embeddings().weight.shape[1]) if paradigm == "regressive" else None
    config = TrainConfig(finetune="lora", paradigm=paradigm)
    save_model(out, rm, config, str(base_path), peft_model=peft_model, base_model=base_model, head=head)
    return rm


def _score(rm, seed):
    return rm.score(random_images(2, seed=seed), ["a red house", "a blue tree"])


def _base_copy(tmp_path):
    base = tmp_path / "models" / "base"
    shutil.copytree(tiny_checkpoint("qwen2_vl"), base)
    return base


def test_local_base_is_recorded_relative_and_moves_with_the_output(tmp_path):
    base, out = _base_copy(tmp_path), tmp_path / "runs" / "a"
    merged = _lora_run(out, base, base_model=str(base))
    assert RewardConfig.load(out).base_model == os.path.join("..", "..", "models", "base")
    seed = _seed()
    expected = _score(merged, seed)
    torch.testing.assert_close(_score(RewardModel.from_pretrained(out, device="cpu"), seed), expected)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "models", moved / "models")
    shutil.move(tmp_path / "runs", moved / "runs")  # both moved together: still loads
    torch.testing.assert_close(_score(RewardModel.from_pretrained(moved / "runs" / "a", device="cpu"), seed), expected)


def test_output_moved_alone_fails_naming_the_base_and_base_model_overrides(tmp_path):
    base, out = _base_copy(tmp_path), tmp_path / "runs" / "a"
    merged = _lora_run(out, base, base_model=str(base))
    alone = tmp_path / "alone"
    shutil.move(out, alone)
    with pytest.raises(InputError, match=r"base model '\.\./\.\./models/base'.*not at.*base_model="):
        RewardModel.from_pretrained(alone, device="cpu")
    seed = _seed()
    again = RewardModel.from_pretrained(alone, device="cpu", base_model=base)
    torch.testing.assert_close(_score(again, seed), _score(merged, seed))


def test_hub_ids_and_tiny_specs_are_recorded_as_given(tmp_path):
    assert record_base_model("Qwen/Qwen2-VL-2B-Instruct@main", tmp_path) == "Qwen/Qwen2-VL-2B-Instruct@main"
    out = tmp_path / "run"
    merged = _lora_run(out, tiny_checkpoint("qwen2_vl"), base_model="tiny:qwen2_vl")
    assert RewardConfig.load(out).base_model == "tiny:qwen2_vl"
    seed = _seed()
    torch.testing.assert_close(_score(RewardModel.from_pretrained(out, device="cpu"), seed), _score(merged, seed))
    config = json.loads((out / "rdfast_config.json").read_text())
    config["base_model"] = "nobody/no-such-model"
    (out / "rdfast_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"'nobody/no-such-model'.*base_model="):
        RewardModel.from_pretrained(out, device="cpu")


def test_older_directories_with_an_absolute_base_still_load(tmp_path):
    base, out = _base_copy(tmp_path), tmp_path / "run"
    merged = _lora_run(out, base, base_model=str(base))
    config = json.loads((out / "rdfast_config.json").read_text())
    config.update(base_model=str(base.resolve()), version=2)  # as version 2 wrote it
    (out / "rdfast_config.json").write_text(json.dumps(config))
    seed = _seed()
    torch.testing.assert_close(_score(RewardModel.from_pretrained(out, device="cpu"), seed), _score(merged, seed))


def test_a_missing_or_non_finite_adapter_tensor_is_an_error_naming_it(tmp_path):
    out = tmp_path / "run"
    _lora_run(out, tiny_checkpoint("qwen2_vl"), base_model="tiny:qwen2_vl")
    state = load_file(out / "adapter_model.safetensors")
    name = sorted(k for k in state if "lora_B" in k)[-1]
    poisoned = dict(state)
    poisoned[name] = poisoned[name].clone()
    poisoned[name][0, 0] = float("nan")
    save_file(poisoned, out / "adapter_model.safetensors")
    with pytest.raises(InputError, match=rf"{name.rsplit('.', 1)[0]}.*non-finite"):
        RewardModel.from_pretrained(out, device="cpu")
    del state[name]
    save_file(state, out / "adapter_model.safetensors")
    with pytest.raises(InputError, match=rf"lacks 1 weight.*{name.rsplit('.', 1)[0]}"):
        RewardModel.from_pretrained(out, device="cpu")


def test_a_broken_regressive_head_is_an_error_naming_it(tmp_path):
    out = tmp_path / "run"
    _lora_run(out, tiny_checkpoint("qwen2_vl"), base_model="tiny:qwen2_vl", paradigm="regressive")
    assert RegressiveRewardModel.from_pretrained(out, device="cpu").head.linear.weight.abs().sum() == 0
    state = load_file(out / HEAD_FILE)
    state["linear.weight"][0, 3] = float("inf")
    save_file(state, out / HEAD_FILE)
    with pytest.raises(InputError, match=r"linear\.weight.*non-finite"):
        RegressiveRewardModel.from_pretrained(out, device="cpu")
    del state["linear.bias"]
    save_file(state, out / HEAD_FILE)
    with pytest.raises(InputError, match=r"lacks 1 weight.*linear\.bias"):
        RegressiveRewardModel.from_pretrained(out, device="cpu")
