"""Trainer and evaluation on a tiny Qwen2-VL: the wiring of every paradigm, reload exactness, CLI, explain."""
import io
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import load_rm
from rdfast import RewardModel
from rdfast.testing import random_images, tiny_checkpoint
from rdfast.train import (
    Collator,
    PreferenceRecord,
    RegressiveRewardModel,
    TrainConfig,
    Trainer,
    evaluate,
    load_trained,
    tune_tie_threshold,
)
from rdfast.train.cli import main as cli_main
from rdfast.train.trainer import RewardTrainModule


def records(n, seed, reasons=False):
    ims = random_images(2 * n, sizes=((56, 56), (84, 56), (56, 84)), seed=seed)
    words = ["red", "blue", "green", "dark", "bright"]
    return [PreferenceRecord(f"a {words[k % 5]} house and a {words[(k * 3) % 5]} tree", ims[2 * k], ims[2 * k + 1],
                             [2, 1, "tie"][k % 3], reason=f"image {1 + k % 2} has the tree" if reasons else None,
                             instruction=["alignment", None][k % 2], line=k + 1) for k in range(n)]


def seed_of(gen):
    return int(torch.randint(0, 10_000, (1,), generator=gen))


# ----------------------------------------------------------------------------------------------------
# Wiring: each paradigm's training loss equals the same loss written on full transformers logits


def full_logits_loss(rm, batch, paradigm, config):
    """Reference: transformers' own forward (full [B, T, V] logits), float64 log-softmax, written by hand."""
    out = rm.model(**batch.inputs, use_cache=False)
    logp = torch.log_softmax(out.logits.double(), dim=-1)
    rows = torch.arange(logp.shape[0])
    yes, no = rm.yes_token_id, rm.no_token_id
    t = batch.target.double()
    if paradigm == "cot":
        pos = batch.decision_pos
        dec = logp[rows, pos - 1]
        total = -(t * dec[:, yes] + (1 - t) * dec[:, no]).sum()
        n = len(rows)
        for b in range(len(rows)):
            for j in range(1, logp.shape[1]):
                label = batch.labels[b, j].item()
                if label != -100 and j != pos[b]:
                    total = total - logp[b, j - 1, label]
                    n += 1
        return total / n
    last = rm.last_positions(batch.inputs["attention_mask"])
    lp = logp[rows, last]
    if paradigm == "pairwise":
        return (-(t * lp[:, yes] + (1 - t) * lp[:, no])).mean()
    s = lp[:, yes] - lp[:, no]
    d = s[1::2] - s[0::2]
    bt = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d))
    hard, win2 = (t != 0.5).double(), (t > 0.5).double()
    ce = -hard * (win2 * (lp[1::2, yes] + lp[0::2, no]) + (1 - win2) * (lp[0::2, yes] + lp[1::2, no]))
    return (bt + config.ce_weight * ce).mean()


@pytest.mark.parametrize("paradigm,packing", [("pairwise", True), ("pairwise", "varlen"), ("pairwise", False),
                                              ("pointwise", True), ("pointwise", False), ("cot", False)])
def test_training_loss_equals_full_logits_formulation(paradigm, packing, gen):
    """packing: rows through the scoring engine (features once, shared prefixes once, equal-length batches or
    varlen-packed rows) or one padded forward; loss and gradients equal the reference either way."""
    rm = RewardModel.from_pretrained(tiny_checkpoint("qwen2_vl"), device="cpu")
    if packing:
        rm.options.packing = packing
    rm.model.requires_grad_(False)
    weight = rm.model.get_output_embeddings().weight
    layer = rm.model.model.language_model.layers[-1].mlp.down_proj.weight
    for p in (weight, layer):
        p.requires_grad_(True)
    config = TrainConfig(paradigm=paradigm, ce_weight=0.3, packing=bool(packing))
    recs = records(4, seed_of(gen), reasons=True)
    batch = Collator(rm, paradigm, cot_format="decision_first")(recs)
    loss, _ = RewardTrainModule(rm, config)(batch)
    if packing:  # the engine's savings happened: each distinct image encoded once, shared prefixes run once
        assert rm.engine.stats["images_encoded"] == len({id(e) for it in batch.items for e in it.media})
        assert (rm.engine.stats["prefix_tokens"] > 0) == (paradigm == "pointwise")
    ours = loss / batch.units("soft")
    g_ours = torch.autograd.grad(ours, (weight, layer))
    ref = full_logits_loss(rm, batch, paradigm, config)
    g_ref = torch.autograd.grad(ref, (weight, layer))
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=2e-5)
    for a, b in zip(g_ours, g_ref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a.double(), b.double(), atol=2e-5, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------
# Training runs


def train(tmp_path, paradigm, finetune, recs, val, **overrides):
    config = TrainConfig(paradigm=paradigm, finetune=finetune, batch_size=4, micro_batch_size=2, max_steps=3,
                         learning_rate=3e-3, lora_r=4, progress=False, instruction="quality", **overrides)
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, recs, val, output_dir=tmp_path / "out", log=io.StringIO())
    return trainer, trainer.train()


@pytest.mark.parametrize("paradigm,finetune", [("pairwise", "lora"), ("regressive", "lora"), ("pointwise", "full")])
def test_trained_directory_reloads_and_reproduces_its_accuracy(tmp_path, paradigm, finetune, gen):
    recs = records(14, seed_of(gen))
    trainer, result = train(tmp_path, paradigm, finetune, recs[:8], recs[8:], eval_every=2)
    out = tmp_path / "out"
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["accuracy"] == result["eval"]["accuracy"] and saved["n_accuracy"] == 4
    config = json.loads((out / "rdfast_config.json").read_text())
    assert config["paradigm"] == paradigm and config["instruction"] == "quality"
    assert ("base_model" in config) == (finetune == "lora")
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


def test_lora_trains_only_the_language_model_projections(tmp_path, gen):
    recs = records(8, seed_of(gen))
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), TrainConfig(batch_size=4, max_steps=1, lora_r=2, progress=False),
                      recs, output_dir=tmp_path, log=io.StringIO())
    names = [n for n, _ in trainer.named_trainable]
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}
    before = {n: p.detach().clone() for n, p in trainer.named_trainable}
    frozen = trainer.rm.model.get_output_embeddings().weight.detach().clone()
    trainer.train_step()
    assert any(not torch.equal(before[n], p) for n, p in trainer.named_trainable)
    assert torch.equal(frozen, trainer.rm.model.get_output_embeddings().weight)


def test_gradient_checkpointing_and_accumulation_do_not_change_the_step(tmp_path, gen):
    """Same global batch: (micro 4, no checkpointing) == (micro 1 x 4 accumulated, checkpointing)."""
    recs = records(8, seed_of(gen))
    states = []
    for micro, ckpt in ((4, False), (1, True)):
        config = TrainConfig(paradigm="pairwise", finetune="full", batch_size=4, micro_batch_size=micro, max_steps=2,
                             gradient_checkpointing=ckpt, learning_rate=1e-3, progress=False)
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
# Evaluation


def test_tie_threshold_tuned_on_validation_reported_on_test():
    p = torch.tensor([0.9, 0.52, 0.47, 0.1, 0.6, 0.45])
    labels = [2, "tie", "tie", 1, 2, 1]
    t = tune_tie_threshold(p, labels)
    assert abs(t - 0.03) < 1e-6  # the smallest threshold catching both ties, none of the others


def test_evaluate_with_ties_and_by_instruction(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    recs = records(9, seed_of(gen))
    val, test = recs[:6], recs[6:]
    res = evaluate(rm, test, val)
    p = torch.tensor(res["probabilities"])
    labels = [r.label for r in test]
    expected = sum((pi > 0.5) == (lab == 2) for pi, lab in zip(p.tolist(), labels) if lab != "tie") / 2
    assert res["accuracy"] == expected and res["n_accuracy"] == 2 and res["n_ties"] == 1
    assert res["tie_threshold_from"] == "validation"
    vp = torch.tensor(evaluate(rm, val)["probabilities"])
    assert res["tie_threshold"] == tune_tie_threshold(vp, [r.label for r in val])
    assert set(res["by_instruction"]) == {"alignment", "overall"}
    assert sum(m["n_pairs"] for m in res["by_instruction"].values()) == 3
    ref = rm.compare(images1=[r.image1 for r in test if r.instruction == "alignment"],
                     images2=[r.image2 for r in test if r.instruction == "alignment"],
                     prompts=[r.prompt for r in test if r.instruction == "alignment"], instruction="alignment")
    torch.testing.assert_close(p[[i for i, r in enumerate(test) if r.instruction == "alignment"]], ref)


def test_cli_train_then_eval(tmp_path, capsys, gen):
    seed = seed_of(gen)
    names = []
    for k, im in enumerate(random_images(12, seed=seed)):
        names.append(f"{k}.png")
        im.save(tmp_path / names[-1])
    lines = [json.dumps({"prompt": f"scene {k}", "image1": names[2 * k], "image2": names[2 * k + 1],
                         "label": [1, 2, "tie"][k % 3]}) for k in range(6)]
    lines.insert(2, json.dumps({"prompt": "bad", "image1": "nope.png", "image2": names[0], "label": 1}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "rm"
    cli_main(["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", str(tmp_path / "train.jsonl"),
              "--val", str(tmp_path / "train.jsonl"), "--output", str(out), "--steps", "2", "--batch-size", "2",
              "--no-progress", "--paradigm", "cot", "--finetune", "full"])
    captured = capsys.readouterr()
    assert "train.jsonl:3: skipped: images1" not in captured.err and "train.jsonl:3: skipped:" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["step"] == 2
    with pytest.raises(SystemExit, match="train.jsonl:3"):
        cli_main(["train", "--model", str(tiny_checkpoint("qwen2_vl")), "--train", str(tmp_path / "train.jsonl"),
                  "--output", str(tmp_path / "strict"), "--steps", "1", "--strict", "--no-progress"])
    assert not (tmp_path / "strict" / "config.json").exists()
    res = cli_main(["eval", "--model", str(out), "--test", str(tmp_path / "train.jsonl"), "--val",
                    str(tmp_path / "train.jsonl"), "--output", str(tmp_path / "eval.json"), "--device", "cpu"])
    table = capsys.readouterr().out
    assert "acc+ties" in table and res["paradigm"] == "cot" and res["n_pairs"] == 6
    trained = json.loads((out / "eval_results.json").read_text())
    assert res["probabilities"] == trained["probabilities"]


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_explain_reads_the_decision_first_then_generates_greedily(family, gen):
    rm = load_rm(family)
    ims = random_images(4, seed=seed_of(gen))
    prompts = ["a red house", "two trees and a much longer description of them"]  # lengths differ: padding
    out = rm.explain(prompts, ims[:2], ims[2:], max_new_tokens=3)  # the method delegates to rdfast.train.explain
    p = rm.compare(images1=ims[:2], images2=ims[2:], prompts=prompts)
    torch.testing.assert_close(torch.tensor([o["p_yes"] for o in out]), p, atol=1e-6, rtol=1e-5)
    for k, o in enumerate(out):
        inputs = rm.build_inputs([prompts[k]], [ims[k]], [ims[2 + k]])
        with torch.no_grad():
            logp = rm.answer_logprobs(inputs)[0]
        assert o["decision"] == ("yes" if logp[0] >= logp[1] else "no")
        ids = inputs["input_ids"][0].tolist() + [rm.yes_token_id if o["decision"] == "yes" else rm.no_token_id]
        for tok in o["reason_ids"][:2]:  # each generated token is the argmax of a full forward (no KV cache)
            x = torch.tensor([ids])
            full = {**inputs, "input_ids": x, "attention_mask": torch.ones_like(x), **rm.family.model_inputs(x)}
            with torch.no_grad():
                assert rm.model(**full).logits[0, -1].argmax().item() == tok
            ids.append(tok)
