"""explain: the decision read first, then reasons generated greedily (each token a full forward's argmax)."""
import pytest
import torch

from conftest import load_rm
from rdfast.testing import random_images


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_explain_reads_the_decision_first_then_generates_greedily(family, gen):
    rm = load_rm(family)
    ims = random_images(4, seed=int(torch.randint(0, 10_000, (1,), generator=gen)))
    prompts = ["a red house", "two trees and a much longer description of them"]  # lengths differ: padding
    out = rm.explain(prompts, ims[:2], ims[2:], max_new_tokens=3)
    p = rm.compare(images1=ims[:2], images2=ims[2:], prompts=prompts)
    torch.testing.assert_close(torch.tensor([o["p_yes"] for o in out]), p, atol=1e-6, rtol=1e-5)
    for k, o in enumerate(out):
        inputs = rm.build_inputs([prompts[k]], [ims[k]], [ims[2 + k]])
        with torch.no_grad():  # independent of the engine: the plain forward's full logits
            logp = rm.model(**inputs).logits[0, -1].double().log_softmax(-1)[[rm.yes_token_id, rm.no_token_id]]
        assert o["decision"] == ("yes" if logp[0] >= logp[1] else "no")
        ids = inputs["input_ids"][0].tolist() + [rm.yes_token_id if o["decision"] == "yes" else rm.no_token_id]
        for tok in o["reason_ids"][:2]:  # each generated token is the argmax of a full forward (no KV cache)
            x = torch.tensor([ids])
            full = {**inputs, "input_ids": x, "attention_mask": torch.ones_like(x), **rm.family.model_inputs(x)}
            with torch.no_grad():
                assert rm.model(**full).logits[0, -1].argmax().item() == tok
            ids.append(tok)
