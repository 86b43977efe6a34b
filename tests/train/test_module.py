"""RewardTrainModule: each paradigm's training loss equals the same loss written on full transformers logits,
through the scoring engine or one padded forward."""
import pytest
import torch
import torch.nn.functional as F

from rdfast import RewardModel
from rdfast.encoding import last_positions
from rdfast.testing import tiny_checkpoint
from rdfast.train import Collator, TrainConfig
from rdfast.train.module import RewardTrainModule

from .common import records, seed_of


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


@pytest.mark.parametrize("paradigm,batching", [("pairwise", "length"), ("pairwise", "varlen"), ("pairwise", "padded"),
                                               ("pointwise", "length"), ("pointwise", "padded"), ("cot", "padded")])
def test_training_loss_equals_full_logits_formulation(paradigm, batching, gen):
    """batching: rows through the scoring engine (features once, shared prefixes once, equal-length batches or
    varlen-packed rows) or one padded forward; loss and gradients equal the reference either way."""
    rm = RewardModel.from_pretrained(tiny_checkpoint("qwen2_vl"), device="cpu")
    rm.model.requires_grad_(False)
    weight = rm.model.get_output_embeddings().weight
    layer = rm.model.model.language_model.layers[-1].mlp.down_proj.weight
    for p in (weight, layer):
        p.requires_grad_(True)
    config = TrainConfig(paradigm=paradigm, ce_weight=0.3, batching=batching)
    recs = records(4, seed_of(gen), reasons=True)
    batch = Collator(rm, paradigm, cot_format="decision_first")(recs)
    module = RewardTrainModule(rm, config)
    assert module.through_engine == (batching != "padded")
    loss, _ = module(batch)
    if batching != "padded":  # the engine's savings happened: each distinct image encoded once, shared prefix once
        assert rm.engine.stats["images_encoded"] == len({id(e) for it in batch.items for e in it.media})
        # both rows of a record share the template and prompt up to the first image that differs
        assert rm.engine.stats["prefix_tokens"] > 0
    ours = loss / batch.units("soft")
    g_ours = torch.autograd.grad(ours, (weight, layer))
    ref = full_logits_loss(rm, batch, paradigm, config)
    g_ref = torch.autograd.grad(ref, (weight, layer))
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=2e-5)
    for a, b in zip(g_ours, g_ref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a.double(), b.double(), atol=2e-5, rtol=1e-3)
