"""The ReFL study's rewards: the reference ablation keeps the best or the worst of the Best-of-N candidates, every
call's per-sample rewards are recorded, and the reward's std over the last steps pools every sample."""
import os

import pytest
import torch

from rdfast.ranking import ordered_pairs, rank_from_pairs
from rdfast.toyworld.refl_study import StudyPairwiseReward, reward_std_last


class BrightnessJudge:
    """A stand-in pairwise RM: P(image 2 better) = sigmoid(50 * (mean(image 2) - mean(image 1)))."""

    device = torch.device("cpu")

    def compare(self, images1=None, images2=None, prompts=None, instruction=None, debias=False, batch_size=None):
        a, b = torch.stack(images1).mean(dim=(1, 2, 3)), torch.stack(images2).mean(dim=(1, 2, 3))
        return torch.sigmoid(50 * (b - a))

    def rank(self, candidates=None, prompt=None, top_k=1, instruction=None, batch_size=None):
        pairs = ordered_pairs(len(candidates))
        p = self.compare([candidates[i] for i, _ in pairs], [candidates[j] for _, j in pairs])
        return rank_from_pairs(p, pairs, len(candidates), top_k)


@pytest.mark.parametrize("reference", ["top", "bottom"])
def test_reference_is_the_best_or_the_worst(reference):
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    levels = torch.randperm(6, generator=gen).float() / 10 + 0.2  # six distinct brightnesses
    candidates = levels[:, None, None, None].expand(6, 3, 8, 8).clone()
    reward = StudyPairwiseReward(BrightnessJudge(), n=6, top_k=2, reference=reference)
    refs = reward.reference("one red circle", candidates)
    ranked = sorted(levels.tolist(), reverse=True)
    expected = ranked[:2] if reference == "top" else ranked[-2:]  # best first either way
    assert refs.mean(dim=(1, 2, 3)).tolist() == pytest.approx(expected)
    middle = torch.full((2, 3, 8, 8), float(levels.median()))
    r = reward(middle, ["one red circle"] * 2)
    # the middle image loses to the top references and beats the bottom ones
    assert (r < 0.5).all() if reference == "top" else (r > 0.5).all()
    assert reward.history == [r.tolist()]


def test_reference_choice_is_checked():
    with pytest.raises(ValueError, match="reference"):
        StudyPairwiseReward(BrightnessJudge(), n=4, top_k=2, reference="middle")


def test_reward_std_pools_the_last_steps():
    history = [[10.0, -10.0], [1.0, 3.0], [2.0, 2.0]]
    assert reward_std_last(history, 2) == pytest.approx(torch.tensor([1.0, 3.0, 2.0, 2.0]).std(unbiased=False).item())
    assert reward_std_last(history, 3) > 5
