"""Evaluation: the tie threshold tuned on validation, accuracy with ties and by instruction."""
import torch

from conftest import load_rm
from rdfast.train import evaluate, tune_tie_threshold

from .common import records, seed_of


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
