"""explain: the decision read first, then reasons generated greedily (each token a full forward's argmax)."""
import pytest
import torch
from conftest import load_rm

from rdfast.testing import random_images

from .common import seed_of


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
            full = {**inputs, "input_ids": x, "attention_mask": torch.ones_like(x), **rm.adapter.model_inputs(x)}
            with torch.no_grad():
                assert rm.model(**full).logits[0, -1].argmax().item() == tok
            ids.append(tok)
