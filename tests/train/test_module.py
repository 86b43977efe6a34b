"""RewardTrainModule: each paradigm's training loss equals the same loss written on full transformers logits
(regressive: on transformers' last hidden state), through the scoring engine or one padded forward, for every
Qwen family (Qwen3-VL dense and MoE on a representative subset of paradigm x batching, to keep CI short)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import skip_unless_prefix_shared
from rdfast import RewardModel
from rdfast.encoding import last_positions
from rdfast.testing import tiny_checkpoint
from rdfast.train import Collator, TrainConfig
from rdfast.train.module import RewardTrainModule
from rdfast.train.regressive import RegressiveHead, hidden_size

from .common import records, seed_of


def full_logits_loss(rm, batch, paradigm, config, head=None):
    """Reference: transformers' own forward (full [B, T, V] logits), float64 log-softmax, written by hand;
    regressive: ``head`` on the base model's last hidden state, Bradley-Terry written by hand."""
    t = batch.target.double()
    if paradigm == "regressive":
        hidden = getattr(rm.model, rm.model.base_model_prefix)(**batch.inputs, use_cache=False).last_hidden_state
        last = last_positions(batch.inputs["attention_mask"])
        r = head(hidden[torch.arange(hidden.shape[0]), last]).double()
        d = r[1::2] - r[0::2]
        return (-(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d))).mean()
    out = rm.model(**batch.inputs, use_cache=False)
    logp = torch.log_softmax(out.logits.double(), dim=-1)
    rows = torch.arange(logp.shape[0])
    yes, no = rm.yes_token_id, rm.no_token_id
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
    last = last_positions(batch.inputs["attention_mask"])
    lp = logp[rows, last]
    if paradigm == "pairwise":
        return (-(t * lp[:, yes] + (1 - t) * lp[:, no])).mean()
    s = lp[:, yes] - lp[:, no]
    d = s[1::2] - s[0::2]
    bt = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d))
    hard, win2 = (t != 0.5).double(), (t > 0.5).double()
    ce = -hard * (win2 * (lp[1::2, yes] + lp[0::2, no]) + (1 - win2) * (lp[0::2, yes] + lp[1::2, no]))
    return (bt + config.ce_weight * ce).mean()


QWEN2 = [("qwen2_vl", p, b) for p, b in [("pairwise", "length"), ("pairwise", "varlen"), ("pairwise", "padded"),
                                         ("pointwise", "length"), ("pointwise", "padded"), ("cot", "padded")]]
QWEN3 = [("qwen3_vl", "pairwise", "length"), ("qwen3_vl", "pointwise", "varlen"), ("qwen3_vl", "cot", "padded"),
         ("qwen3_vl", "regressive", "padded"), ("qwen3_vl", "regressive", "length"),
         ("qwen3_vl_moe", "pairwise", "varlen"), ("qwen3_vl_moe", "pointwise", "padded"),
         ("qwen3_5", "pairwise", "length"), ("qwen3_5", "pointwise", "padded"), ("qwen3_5", "cot", "padded"),
         ("qwen3_5_moe", "pairwise", "length"), ("qwen3_5_moe", "pointwise", "padded")]


def trained_weight(rm):
    """A language-model weight deep in the stack (MoE: the last layer's expert down projections [E, H, I])."""
    mlp = rm.model.model.language_model.layers[-1].mlp
    return mlp.experts.down_proj if hasattr(mlp, "experts") else mlp.down_proj.weight


@pytest.mark.parametrize("family,paradigm,batching", QWEN2 + QWEN3)
def test_training_loss_equals_full_logits_formulation(family, paradigm, batching, gen):
    """batching: rows through the scoring engine (features once, shared prefixes once, equal-length batches or
    varlen-packed rows) or one padded forward; loss and gradients equal the reference either way."""
    rm = RewardModel.from_pretrained(tiny_checkpoint(family), device="cpu")
    if batching != "padded":
        skip_unless_prefix_shared(rm)
    rm.model.requires_grad_(False)
    head = None
    if paradigm == "regressive":  # the LM head is unused; a random head (a zero one would give zero gradients)
        head = RegressiveHead(hidden_size(rm))
        torch.nn.init.normal_(head.linear.weight, generator=gen)
        weight = head.linear.weight
    else:
        weight = rm.model.get_output_embeddings().weight
    layer = trained_weight(rm)
    for p in (weight, layer):
        p.requires_grad_(True)
    config = TrainConfig(paradigm=paradigm, ce_weight=0.3, batching=batching)
    recs = records(4, seed_of(gen), reasons=True)
    batch = Collator(rm, paradigm, cot_format="decision_first")(recs)
    module = RewardTrainModule(rm, config, head)
    assert module.through_engine == (batching != "padded")
    loss, _ = module(batch)
    if batching != "padded":  # the engine's savings happened: each distinct image encoded once, shared prefix once
        assert rm.engine.stats["images_encoded"] == len({id(e) for it in batch.items for e in it.media})
        # both rows of a record share the template and prompt up to the first image that differs
        assert rm.engine.stats["prefix_tokens"] > 0
    ours = loss / batch.units("soft")
    g_ours = torch.autograd.grad(ours, (weight, layer))
    ref = full_logits_loss(rm, batch, paradigm, config, head)
    g_ref = torch.autograd.grad(ref, (weight, layer))
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=2e-5)
    for a, b in zip(g_ours, g_ref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a.double(), b.double(), atol=2e-5, rtol=1e-3)
