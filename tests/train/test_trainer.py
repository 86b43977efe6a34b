"""Trainer on a tiny Qwen2-VL: training runs of each paradigm, reload exactness, LoRA targets, accumulation,
bf16, and the LR schedule."""
import io
import json
import math

import pytest
import torch

from rdfast.testing import random_images, tiny_checkpoint
from rdfast.train import (
    PreferenceRecord,
    RegressiveRewardModel,
    TrainConfig,
    Trainer,
    evaluate,
    load_trained,
)
from rdfast.train.trainer import lr_scheduler

from .common import records, seed_of


def train(tmp_path, paradigm, finetune, recs, val, **overrides):
    config = TrainConfig(paradigm=paradigm, finetune=finetune, batch_size=4, micro_batch_size=2, max_steps=3,
                         learning_rate=3e-3, lora_r=4, progress=False, instruction="quality", **overrides)
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, recs, val, output_dir=tmp_path / "out", log=io.StringIO())
    return trainer, trainer.train()


@pytest.mark.parametrize("paradigm,finetune", [("pairwise", "lora"), ("regressive", "lora"), ("pointwise", "full")])
def test_trained_directory_reloads_and_reproduces_its_accuracy(tmp_path, paradigm, finetune, gen):
    recs = records(14, seed_of(gen))
    _, result = train(tmp_path, paradigm, finetune, recs[:8], recs[8:], eval_every=2)
    out = tmp_path / "out"
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["accuracy"] == result["eval"]["accuracy"] and saved["n_accuracy"] == 4
    config = json.loads((out / "rdfast_config.json").read_text())
    assert config["paradigm"] == paradigm and config["instruction"] == "quality"
    assert (config.get("base_model") is not None) == (finetune == "lora")  # RewardConfig writes every field
    model, par = load_trained(out, device="cpu")
    assert par == paradigm
    assert isinstance(model, RegressiveRewardModel) == (paradigm == "regressive")
    again = evaluate(model, recs[8:], paradigm=paradigm)
    assert again["accuracy"] == saved["accuracy"]
    assert again["probabilities"] == saved["probabilities"]  # bitwise: the same weights, the same batches
    rm = model.rm if paradigm == "regressive" else model
    assert rm.instruction == "quality" and rm.normalize == "vocab"
    history = json.loads((out / "train_history.json").read_text())
    assert [h["step"] for h in history["history"]] == [1, 2, 3]
    assert [e["step"] for e in history["evals"]] == [2, 3]
    assert (out / "training_curves.png").stat().st_size > 1000


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "qwen3_5"])
def test_lora_trains_only_the_language_model_projections(tmp_path, family, gen):
    """Qwen3.5's linear-attention layers have their own projection names; before they were listed, LoRA on
    Qwen3.5 adapted only its few full-attention layers and the MLPs."""
    recs = records(8, seed_of(gen))
    trainer = Trainer(tiny_checkpoint(family), TrainConfig(batch_size=4, max_steps=1, lora_r=2, progress=False),
                      recs, output_dir=tmp_path, log=io.StringIO())
    names = [n for n, _ in trainer.named_trainable]
    assert names and all("lora_" in n and "language_model" in n for n in names)
    expected = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if family == "qwen3_5":
        expected |= {"in_proj_qkv", "in_proj_z", "out_proj"}
    assert {n.split(".")[-4] for n in names} == expected
    before = {n: p.detach().clone() for n, p in trainer.named_trainable}
    frozen = trainer.rm.model.get_output_embeddings().weight.detach().clone()
    trainer.train_step()
    assert any(not torch.equal(before[n], p) for n, p in trainer.named_trainable)
    assert torch.equal(frozen, trainer.rm.model.get_output_embeddings().weight)


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "qwen3_5_moe"])
def test_lora_on_moe_adapts_attention_and_the_3d_expert_weights(tmp_path, family, gen):
    """MoE experts (Qwen3-VL MoE, Qwen3.5 MoE) are 3-D parameters [E, out, in], not Linear modules: LoRA reaches
    them through peft's target_parameters (one adapter per expert), and the saved adapter reloads to the same
    scores. Qwen3.5 MoE's shared expert is Linear modules (adapted as such) and its linear-attention layers keep
    their own projections."""
    recs = records(8, seed_of(gen))
    config = TrainConfig(batch_size=4, max_steps=2, lora_r=2, learning_rate=1e-2, progress=False)
    trainer = Trainer(tiny_checkpoint(family), config, recs, output_dir=tmp_path / "out", log=io.StringIO())
    names = [n for n, _ in trainer.named_trainable]
    assert names and all("lora_" in n and "language_model" in n for n in names)
    layers = trainer.rm.model.config.get_text_config().num_hidden_layers
    # gate_up_proj and down_proj of each layer's experts, each an (A, B) pair
    assert sum(".mlp.experts." in n for n in names) == 2 * 2 * layers
    assert {n.split(".")[-4] for n in names if ".self_attn." in n} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    if family == "qwen3_5_moe":
        assert {n.split(".")[-4] for n in names if ".shared_expert." in n} == {"gate_proj", "up_proj", "down_proj"}
        assert {n.split(".")[-4] for n in names if ".linear_attn." in n} == {"in_proj_qkv", "in_proj_z", "out_proj"}
    base_down = trainer.rm.model.model.language_model.layers[0].mlp.experts.get_base_layer().down_proj.detach().clone()
    before = {n: p.detach().clone() for n, p in trainer.named_trainable}
    trainer.train()
    assert all(not torch.equal(before[n], p) for n, p in trainer.named_trainable if ".mlp.experts." in n and "_B" in n)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["target_parameters"]
    model, _ = load_trained(tmp_path / "out", device="cpu")
    assert not torch.equal(base_down, model.model.model.language_model.layers[0].mlp.experts.down_proj)
    again = evaluate(model, recs, paradigm="pairwise")
    torch.testing.assert_close(torch.tensor(again["probabilities"]),
                               torch.tensor(evaluate(trainer.rm, recs, paradigm="pairwise")["probabilities"]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,steps,side", [("qwen3_vl", 8, 56), ("qwen3_vl_moe", 8, 56),
                                               pytest.param("qwen3_5", 12, 64, marks=pytest.mark.slow),
                                               pytest.param("qwen3_5_moe", 12, 64, marks=pytest.mark.slow)])
def test_full_finetune_memorises_32_pairs(tmp_path, family, steps, side, gen):
    """A tiny training run that learns: 32 fixed pairs of fresh random images, balanced random labels, pairwise
    full fine-tuning on the whole set each step, accuracy >= 0.9 within ``steps`` steps. Scored with yes/no
    normalisation (P(yes) of the two answers): under "vocab" P(yes) > 0.5 would also need the answers to take most
    of the vocabulary's mass, which a tiny random model reaches only after many more steps. Measured (lr 3e-3):
    Qwen3-VL >= 0.9 at step 3-4 over 6 seeds; Qwen3.5 stays at 0.5 (one answer for every pair) up to step 8-9,
    then reaches 1.0 at step 10 over 4 seeds (hence 12). Qwen3.5 runs transformers' torch fallback of the gated
    delta rule on CPU; marked ``slow``: 193 s for the Qwen3.5 case (326 s for Qwen3-VL's) in one run on 2 cores
    shared with other jobs (load average 6-14). The MoE variants (qwen3_vl_moe, qwen3_5_moe) pass with the same step counts (4 fresh seeds each, about
    7 s each on a quieter machine)."""
    ims = random_images(64, sizes=((side, side),), seed=seed_of(gen))
    labels = [1 + int(i < 16) for i in torch.randperm(32, generator=gen)]
    recs = [PreferenceRecord("a house and a tree", ims[2 * k], ims[2 * k + 1], labels[k]) for k in range(32)]
    config = TrainConfig(paradigm="pairwise", finetune="full", batch_size=32, max_steps=steps, learning_rate=3e-3,
                         both_orders=False, normalize="yes_no", progress=False, seed=seed_of(gen))
    trainer = Trainer(tiny_checkpoint(family), config, recs, output_dir=tmp_path, log=io.StringIO())
    assert evaluate(trainer.rm, recs)["accuracy"] < 0.9
    for _ in range(steps):
        trainer.train_step()
    assert evaluate(trainer.rm, recs)["accuracy"] >= 0.9


def test_gradient_checkpointing_and_accumulation_do_not_change_the_step(tmp_path, gen):
    """Same global batch: (micro 4, no checkpointing) == (micro 1 x 4 accumulated, checkpointing).

    adam_eps 1e-3: with the default 1e-8, AdamW divides a gradient near 1e-8 (embedding rows whose terms cancel) by
    about 1e-8, so the accumulation order's float32 rounding (~1e-10) became weight differences of 1.3e-6 to 4.5e-6
    over 30 seeds and once above 1e-5 in a full run (a flaky failure). With 1e-3 the same seeds differ by 7e-9 to
    1.2e-7, and small updates stay proportional to the gradient, so a mis-scaled accumulation would now show."""
    recs = records(8, seed_of(gen))
    states = []
    for micro, ckpt in ((4, False), (1, True)):
        config = TrainConfig(paradigm="pairwise", finetune="full", batch_size=4, micro_batch_size=micro, max_steps=2,
                             gradient_checkpointing=ckpt, learning_rate=1e-3, adam_eps=1e-3, progress=False)
        trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, recs, output_dir=tmp_path / str(micro), log=io.StringIO())
        logs = [trainer.train_step(), trainer.train_step()]
        states.append(({n: p.detach().clone() for n, p in trainer.named_trainable}, logs))
    (a, la), (b, lb) = states
    for x, y in zip(la, lb):
        assert abs(x["loss"] - y["loss"]) < 1e-5
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=0, msg=n)


def test_bf16_autocast_step_is_close_to_float32(tmp_path, gen):
    recs = records(4, seed_of(gen))
    losses = []
    for bf16 in (False, True):
        config = TrainConfig(paradigm="pointwise", finetune="lora", batch_size=4, max_steps=1, bf16=bf16,
                             progress=False)
        trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, recs, output_dir=tmp_path / str(bf16), log=io.StringIO())
        losses.append(trainer.train_step()["loss"])
        assert all(p.dtype == torch.float32 for _, p in trainer.named_trainable)  # float32 master weights
    assert abs(losses[0] - losses[1]) < 0.05 * abs(losses[0]) and losses[0] != losses[1]


# ----------------------------------------------------------------------------------------------------
# The learning-rate schedule


def reference_factor(schedule, step, warmup, total):
    """Written by hand: linear warm-up from 0 (step / warmup), then constant, linear or cosine decay to 0."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_lr_schedule_equals_the_hand_written_reference(schedule, warmup):
    weight, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 0.5}, {"params": [head], "lr": 0.25}])
    scheduler = lr_scheduler(optimizer, TrainConfig(lr_schedule=schedule, warmup_steps=warmup, max_steps=11))
    for step in range(11):
        factor = reference_factor(schedule, step, warmup, 11)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * factor, abs=1e-15), step
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.25 * factor, abs=1e-15), step
        optimizer.step()
        scheduler.step()


def test_trainer_logs_the_scheduled_lr(tmp_path, gen):
    recs = records(8, seed_of(gen))
    config = TrainConfig(batch_size=4, max_steps=3, lr_schedule="linear", warmup_steps=2, learning_rate=1e-3,
                         lora_r=2, progress=False)
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, recs, output_dir=tmp_path, log=io.StringIO())
    lrs = [trainer.train_step()["lr"] for _ in range(3)]
    assert lrs == pytest.approx([1e-3 * reference_factor("linear", s, 2, 3) for s in range(3)], abs=1e-15)
