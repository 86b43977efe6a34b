"""Reasons-first scoring against transformers by hand: generate, then one plain forward of the completed text.

The reference for a rationale is transformers' own ``generate`` (greedy) cut at the first special token; the
reference for a score is the plain float32 forward of prompt + rationale + decision prefix, log-softmax in
float64, compared in log P within 1e-5.
"""
import pytest
import torch

from conftest import load_rm, unresized_side
from rdfast.testing import random_images

PROMPTS = ["a red house", "two trees and a much longer description of them"]  # lengths differ


def seed_of(gen):
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def special_ids(tokenizer):
    """Every id the tokenizer treats as special or added (independent of rdfast's own set)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in tokenizer.added_tokens_decoder.items() if str(t).strip())
    return ids


def plain_logp_yes(rm, inputs, extra):
    ids = torch.cat([inputs["input_ids"], torch.tensor([extra], dtype=torch.long)], dim=1)
    full = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids), **rm.family.model_inputs(ids)}
    with torch.no_grad():
        logits = rm.model(**full).logits[0, -1].double()
    return torch.log_softmax(logits, -1)[rm.yes_token_id].item()


def test_one_sample_equals_generate_by_hand_then_a_plain_forward(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(2, seed=seed_of(gen))
    scores, rationales = rm.score(images=images, prompts=PROMPTS, reasoning="reasons_first", max_new_tokens=6,
                                  return_rationales=True)
    newline = rm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    special = special_ids(rm.tokenizer)
    for k in range(2):
        inputs = rm.build_inputs(prompts=PROMPTS[k : k + 1], images1=images[k : k + 1])
        with torch.no_grad():
            out = rm.model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=rm.pad_token_id,
                                    eos_token_id=rm.tokenizer.eos_token_id)
        by_hand = out[0, inputs["input_ids"].shape[1] :].tolist()
        cut = next((i for i, t in enumerate(by_hand) if t in special), len(by_hand))
        (only,) = rationales[k]
        assert only["token_ids"] == by_hand[:cut] and not special & set(only["token_ids"])
        assert only["text"] == rm.tokenizer.decode(by_hand[:cut])
        ref = plain_logp_yes(rm, inputs, by_hand[:cut] + newline)
        assert abs(torch.tensor(only["p_yes"]).double().log().item() - ref) < 1e-5
        assert abs(scores[k].double().log().item() - ref) < 1e-5
    plain = rm.score(images=images, prompts=PROMPTS, reasoning="reasons_first", max_new_tokens=6)
    assert torch.equal(plain, scores)


def test_three_samples_are_seeded_and_each_is_a_plain_forward_of_prompt_and_rationale(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(2, seed=seed_of(gen))
    seed = seed_of(gen)
    kwargs = dict(images=images, prompts=PROMPTS, reasoning="reasons_first", samples=3, max_new_tokens=5,
                  return_rationales=True)
    scores, rationales = rm.score(seed=seed, **kwargs)
    again, rationales_again = rm.score(seed=seed, **kwargs)
    assert torch.equal(scores, again) and rationales == rationales_again
    other, rationales_other = rm.score(seed=seed + 1, **kwargs)
    assert rationales_other != rationales  # sampled, not greedy: another seed draws other rationales
    newline = rm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    special = special_ids(rm.tokenizer)
    for k in range(2):
        inputs = rm.build_inputs(prompts=PROMPTS[k : k + 1], images1=images[k : k + 1])
        assert len(rationales[k]) == 3
        per_sample = []
        for sample in rationales[k]:
            assert not special & set(sample["token_ids"]) and len(sample["token_ids"]) <= 5
            ref = plain_logp_yes(rm, inputs, sample["token_ids"] + newline)
            assert abs(torch.tensor(sample["p_yes"]).double().log().item() - ref) < 1e-5
            per_sample.append(ref)
        mean = torch.tensor(per_sample).exp().mean()
        assert abs(scores[k].double().log().item() - mean.log().item()) < 1e-5


class Steering(torch.nn.Module):
    """The LM head with a huge logit forced on one token per call: ``plan[i]`` on the i-th call."""

    def __init__(self, head, plan):
        super().__init__()
        self.head, self.plan, self.calls = head, plan, 0
        self.weight, self.bias = head.weight, None

    def forward(self, hidden):
        logits = self.head(hidden).clone()
        token = self.plan[min(self.calls, len(self.plan) - 1)]
        self.calls += 1
        logits[..., token] += 1e4
        return logits


def test_a_media_or_special_token_ends_the_rationale_and_the_prompt_runs_once(gen, monkeypatch):
    rm = load_rm("qwen2_vl")
    images = random_images(1, seed=seed_of(gen))
    words = rm.tokenizer("red house", add_special_tokens=False)["input_ids"]
    image_pad = rm.model.config.image_token_id
    steering = Steering(rm.model.get_output_embeddings(), words + [image_pad])
    monkeypatch.setattr(rm.model, "get_output_embeddings", lambda: steering)
    calls = []
    forward = rm.family.language_forward

    def counting(lm, embeds, *args, **kwargs):
        calls.append(tuple(embeds.shape[:2]))
        return forward(lm, embeds, *args, **kwargs)

    monkeypatch.setattr(rm.family, "language_forward", counting)
    encoded = rm.engine.stats["images_encoded"]
    _, rationales = rm.score(images=images, prompts=PROMPTS[:1], reasoning="reasons_first", samples=3, seed=1,
                             max_new_tokens=8, return_rationales=True)
    assert [s["token_ids"] for s in rationales[0]] == [words] * 3  # cut before <|image_pad|>, never emitted
    prompt_length = len(rm.encode(PROMPTS[:1], [images])[0].input_ids)
    generation = calls[: len(words) + 1]
    assert generation == [(1, prompt_length)] + [(3, 1)] * len(words)  # the prompt once for all 3 samples
    assert rm.engine.stats["images_encoded"] - encoded == 1  # once, to generate and to read the decisions


def test_a_decision_the_model_writes_is_re_read_not_kept(gen, monkeypatch):
    rm = load_rm("qwen2_vl")
    images = random_images(1, seed=seed_of(gen))
    words = rm.tokenizer("red", add_special_tokens=False)["input_ids"]
    newline = rm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    plan = words + newline + [rm.yes_token_id, rm.tokenizer.eos_token_id]
    steering = Steering(rm.model.get_output_embeddings(), plan)
    monkeypatch.setattr(rm.model, "get_output_embeddings", lambda: steering)
    _, rationales = rm.score(images=images, prompts=PROMPTS[:1], reasoning="reasons_first", max_new_tokens=8,
                             return_rationales=True)
    assert rationales[0][0]["token_ids"] == words


def test_bad_reasoning_arguments_are_refused(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(1, seed=seed_of(gen))
    for bad, match in (({"reasoning": "think"}, "reasoning must be None or one of"),
                       ({"reasoning": "reasons_first", "samples": 0}, "samples must be an integer of at least 1"),
                       ({"reasoning": "reasons_first", "temperature": 0.0}, "temperature must be positive"),
                       ({"return_rationales": True}, "return_rationales need one"),
                       ({"samples": 4}, "samples and return_rationales need one")):
        with pytest.raises(ValueError, match=match):
            rm.score(images=images, prompts=PROMPTS[:1], **bad)


def test_explain_reasons_first_reads_as_score_does(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(1, seed=seed_of(gen))
    (out,) = rm.explain(PROMPTS[:1], images, cot_format="reasons_first", max_new_tokens=4)
    scores, rationales = rm.score(images=images, prompts=PROMPTS[:1], reasoning="reasons_first", max_new_tokens=4,
                                  return_rationales=True)
    assert out["reason_ids"] == rationales[0][0]["token_ids"]
    assert abs(out["p_yes"] - scores[0].item()) < 1e-6 * scores[0].item()


@pytest.mark.parametrize("family", ["qwen3_vl", "internvl"])  # deepstack extras; 1-D positions
def test_other_families_sample_and_read_as_a_plain_forward(family, gen):
    rm = load_rm(family)
    side = unresized_side(family)
    images = random_images(1, sizes=((side, side),), seed=seed_of(gen))
    _, rationales = rm.score(images=images, prompts=PROMPTS[:1], reasoning="reasons_first", samples=2,
                             seed=seed_of(gen), max_new_tokens=3, return_rationales=True)
    inputs = rm.build_inputs(prompts=PROMPTS[:1], images1=images)
    newline = rm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    for sample in rationales[0]:
        ref = plain_logp_yes(rm, inputs, sample["token_ids"] + newline)
        assert abs(torch.tensor(sample["p_yes"]).double().log().item() - ref) < 1e-5
