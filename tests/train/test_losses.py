"""Every loss equals a plain PyTorch float64 formulation, in value and gradient.

The references are written independently: full-vocabulary logits and ``F.cross_entropy`` (soft targets where
needed), ``log(sigmoid(.))`` for Bradley-Terry, per-row Python loops for the pointwise CE. Inputs are fresh
random logits each run; the comparison is on the gradient with respect to the logits (float64, 1e-6), and
again through the fused head on float32 hidden states and LM-head weight (against float64, at float32
tolerance).
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rdfast.model import RewardModel
from rdfast.train import (
    bradley_terry_loss,
    cot_loss,
    pairwise_loss,
    pointwise_loss,
    sequence_logprobs,
)

V = 97  # odd sizes on purpose
YES, NO = 11, 42


def random_targets(n, gen, ties=True):
    choices = torch.tensor([0.0, 1.0, 0.5] if ties else [0.0, 1.0], dtype=torch.float64)
    t = choices[torch.randint(0, len(choices), (n,), generator=gen)]
    t[0], t[1] = 0.0, 1.0  # never all ties
    return t


def soft_ce(logits, yes_weight):
    """Reference: cross-entropy over the whole vocabulary against {yes: w, no: 1 - w}, per row (float64)."""
    dist = torch.zeros_like(logits)
    dist[:, YES] = yes_weight
    dist[:, NO] = 1 - yes_weight
    return F.cross_entropy(logits, dist, reduction="none")


def answer_logp(logits):
    return torch.log_softmax(logits, dim=-1)[:, [YES, NO]]


def check(ours_fn, ref_fn, *leaves, atol=1e-6, rtol=1e-6):
    ours = ours_fn()
    g_ours = torch.autograd.grad(ours, leaves)
    ref = ref_fn()
    g_ref = torch.autograd.grad(ref, leaves)
    torch.testing.assert_close(ours, ref, atol=atol, rtol=rtol)
    for a, b in zip(g_ours, g_ref):
        assert b.abs().max() > 0  # the comparison means something
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("ties", ["soft", "skip"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pairwise_loss_is_full_vocab_cross_entropy(ties, reduction, gen):
    n = 13
    logits = (3 * torch.randn(n, V, generator=gen, dtype=torch.float64)).requires_grad_()
    t = random_targets(n, gen)

    def ref():
        per = soft_ce(logits, t)
        keep = t != 0.5 if ties == "skip" else torch.ones(n, dtype=torch.bool)
        total = per[keep].sum()
        return total / keep.sum() if reduction == "mean" else total

    check(lambda: pairwise_loss(answer_logp(logits), t, ties, reduction), ref, logits)


def test_pairwise_loss_both_orders_is_symmetric(gen):
    """Rows (x1, x2, t) and (x2, x1, 1 - t) from the same logits give the same loss as target t twice."""
    logits = torch.randn(4, V, generator=gen, dtype=torch.float64)
    t = random_targets(4, gen)
    lp = answer_logp(logits)
    swapped = lp.flip(1)  # a judge whose yes/no swap with the order
    a = pairwise_loss(torch.cat([lp, swapped]), torch.cat([t, 1 - t]), reduction="sum")
    torch.testing.assert_close(a, 2 * pairwise_loss(lp, t, reduction="sum"), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("ties", ["soft", "skip"])
def test_pointwise_loss_matches_bradley_terry_plus_ce(ties, gen):
    p, w = 11, 0.3
    logits1 = (2 * torch.randn(p, V, generator=gen, dtype=torch.float64)).requires_grad_()
    logits2 = (2 * torch.randn(p, V, generator=gen, dtype=torch.float64)).requires_grad_()
    t = random_targets(p, gen)

    def ref():
        terms = []
        for i in range(p):
            if ties == "skip" and t[i] == 0.5:
                continue
            z1, z2 = logits1[i], logits2[i]
            s1, s2 = z1[YES] - z1[NO], z2[YES] - z2[NO]  # raw logit differences
            bt = -(t[i] * torch.log(torch.sigmoid(s2 - s1)) + (1 - t[i]) * torch.log(torch.sigmoid(s1 - s2)))
            ce = torch.zeros((), dtype=torch.float64)
            if t[i] != 0.5:
                win, lose = (z2, z1) if t[i] == 1 else (z1, z2)
                ce = F.cross_entropy(win[None], torch.tensor([YES])) + F.cross_entropy(lose[None], torch.tensor([NO]))
            terms.append(bt + w * ce)
        return torch.stack(terms).mean()

    check(lambda: pointwise_loss(answer_logp(logits1), answer_logp(logits2), t, w, ties), ref, logits1, logits2)


@pytest.mark.parametrize("ties", ["soft", "skip"])
def test_bradley_terry_loss(ties, gen):
    r1 = (3 * torch.randn(17, generator=gen, dtype=torch.float64)).requires_grad_()
    r2 = (3 * torch.randn(17, generator=gen, dtype=torch.float64)).requires_grad_()
    t = random_targets(17, gen)

    def ref():
        keep = t != 0.5 if ties == "skip" else torch.ones(17, dtype=torch.bool)
        per = -(t * torch.log(torch.sigmoid(r2 - r1)) + (1 - t) * torch.log(torch.sigmoid(r1 - r2)))
        return per[keep].mean()

    check(lambda: bradley_terry_loss(r1, r2, t, ties), ref, r1, r2)


class FakeRM:
    """A RewardModel reduced to its LM head: the real ``RewardModel.head_logprobs`` over ``model.get_output_embeddings()``."""

    head_logprobs = RewardModel.head_logprobs

    def __init__(self, weight, bias=None):
        head = SimpleNamespace(weight=weight, bias=bias)  # the tensors themselves, so gradients reach them
        self.model = SimpleNamespace(get_output_embeddings=lambda: head)


def cot_inputs(gen, B=3, T=9, H=16, dtype=torch.float64):
    hidden = torch.randn(B, T, H, generator=gen, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=gen, dtype=dtype) / 2).requires_grad_()
    labels = torch.full((B, T), -100)
    decision_pos = torch.tensor([3, 5, 4])
    for b in range(B):  # a continuation from the decision to a row-dependent end
        end = T - b
        labels[b, decision_pos[b] : end] = torch.randint(0, V, (end - decision_pos[b],), generator=gen)
        labels[b, decision_pos[b]] = YES
    return hidden, weight, labels, decision_pos


def cot_reference(hidden, weight, labels, decision_pos, t, decision_weight, ties):
    """Full [B, T, V] logits in float64; soft CE at the decision, token CE elsewhere; per-token mean."""
    logits = hidden.double() @ weight.double().T
    B = hidden.shape[0]
    rows = torch.arange(B)
    dec = soft_ce(logits[rows, decision_pos - 1], t)
    keep = t != 0.5 if ties == "skip" else torch.ones(B, dtype=torch.bool)
    tok_labels = labels.clone()
    tok_labels[rows, decision_pos] = -100
    tok = F.cross_entropy(logits[:, :-1].reshape(-1, V), tok_labels[:, 1:].reshape(-1), ignore_index=-100,
                          reduction="sum")
    n_tok = int((tok_labels[:, 1:] != -100).sum())
    return (decision_weight * dec[keep].sum() + tok) / (int(keep.sum()) + n_tok)


def cot_ours(hidden, weight, labels, decision_pos, t, decision_weight, ties):
    rm = FakeRM(weight)
    rows = torch.arange(hidden.shape[0])
    if hidden.dtype == torch.float64:  # the fused head takes fp32/bf16: the float64 check runs the same math
        logits = hidden @ weight.T
        dec = torch.log_softmax(logits[rows, decision_pos - 1], -1)[:, [YES, NO]]
        tok_labels = labels.clone()
        tok_labels[rows, decision_pos] = -100
        mask = tok_labels[:, 1:] != -100
        tok = torch.log_softmax(logits[:, :-1][mask], -1).gather(1, tok_labels[:, 1:][mask][:, None])[:, 0]
    else:
        dec = rm.head_logprobs(hidden[rows, decision_pos - 1], torch.tensor([YES, NO]))[0]
        tok_labels = labels.clone()
        tok_labels[rows, decision_pos] = -100
        tok = sequence_logprobs(rm, hidden, tok_labels)
    return cot_loss(dec, t, tok, decision_weight, ties)


@pytest.mark.parametrize("ties", ["soft", "skip"])
def test_cot_loss_float64(ties, gen):
    hidden, weight, labels, pos = cot_inputs(gen)
    t = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    args = (hidden, weight, labels, pos, t, 0.7, ties)
    check(lambda: cot_ours(*args), lambda: cot_reference(*args), hidden, weight)


@pytest.mark.parametrize("ties", ["soft", "skip"])
def test_cot_loss_through_the_fused_head_float32(ties, gen):
    """sequence_logprobs + head_logprobs (per-row targets, no [tokens, vocab] logits) vs float64 full logits."""
    hidden, weight, labels, pos = cot_inputs(gen, dtype=torch.float32)
    t = torch.tensor([1.0, 0.5, 0.0])
    ours = cot_ours(hidden, weight, labels, pos, t, 0.7, ties)
    g_ours = torch.autograd.grad(ours, (hidden, weight))
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    ref = cot_reference(h64, w64, labels, pos, t.double(), 0.7, ties)
    g_ref = torch.autograd.grad(ref, (h64, w64))
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)  # float32 tolerance (as in ops tests)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_pairwise_loss_through_the_fused_head_float32(gen):
    """The fused head's backward reaches hidden and the LM-head weight; equal to float64 full logits."""
    N, H = 10, 24
    hidden = torch.randn(N, H, generator=gen).requires_grad_()
    weight = (torch.randn(V, H, generator=gen) / 3).requires_grad_()
    bias = torch.randn(V, generator=gen).requires_grad_()
    t = random_targets(N, gen).float()
    ours = pairwise_loss(FakeRM(weight, bias).head_logprobs(hidden, torch.tensor([YES, NO]))[0], t)
    g_ours = torch.autograd.grad(ours, (hidden, weight, bias))
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight, bias)]
    ref = soft_ce(leaves[0] @ leaves[1].T + leaves[2], t.double()).mean()
    g_ref = torch.autograd.grad(ref, leaves)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_refused():
    lp = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="ties"):
        pairwise_loss(lp, torch.zeros(2), ties="half")
    with pytest.raises(ValueError, match="reduction"):
        pairwise_loss(lp, torch.zeros(2), reduction="avg")


def test_all_ties_skipped_gives_zero_not_nan():
    lp = torch.log_softmax(torch.randn(3, 2), -1).requires_grad_()
    loss = pairwise_loss(lp, torch.full((3,), 0.5), ties="skip")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(lp.grad).all()
