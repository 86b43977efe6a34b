"""The stage scheduler's plan (toyworld.schedule) on hand-computed cases, and the reward models' full budget
planned within the study's 45 minutes on two one-thread workers."""
import pytest

from rdfast.toyworld import reward_models as trm
from rdfast.toyworld import schedule


def test_makespan_and_ranks_by_hand():
    # a (4) -> b (3) and a -> c (1); d (5) alone. Ranks: a 4+3, b 3, c 1, d 5.
    costs, deps = {"a": 4, "b": 3, "c": 1, "d": 5}, {"b": {"a"}, "c": {"a"}}
    assert schedule.ranks(costs, deps) == {"a": 7, "b": 3, "c": 1, "d": 5}
    # two workers: a [0,4] and d [0,5]; b [4,7] on a's worker; c [5,6] on d's: done at 7
    assert schedule.makespan(costs, deps, 2) == 7
    assert schedule.makespan(costs, deps, 1) == 13
    assert schedule.makespan(costs, deps, 4) == 7  # the chain a -> b bounds it
    with pytest.raises(ValueError, match="cycle"):
        schedule.ranks({"a": 1, "b": 1}, {"a": {"b"}, "b": {"a"}})
    with pytest.raises(ValueError, match="no cost"):
        schedule.ranks({"a": 1}, {"a": {"z"}})


def test_stages_wait_for_what_they_start_from():
    deps = trm._tasks(["small"], ["pairwise_from_verifier", "regressive"])
    assert deps == {("small", "warmup"): set(), ("small", "regressive"): {("small", "warmup")},
                    ("small", "pointwise"): {("small", "warmup")},
                    ("small", "pairwise_from_verifier"): {("small", "pointwise")}}
    with pytest.raises(ValueError, match="size 'huge'"):
        trm._tasks(["huge"], ["pairwise"])


def test_full_budget_is_planned_within_the_study_stage():
    plan = trm.estimate(trm.STUDY_SIZES, trm.PARADIGMS, trm.BUDGETS["full"], workers=2)
    assert set(plan["stages"]) == {f"{s}/{t}" for s in trm.STUDY_SIZES for t in ("warmup",) + trm.PARADIGMS}
    assert plan["seconds"] <= 45 * 60, plan  # the study's reward-model stage: 45 minutes on 2 cores
    assert plan["core_seconds"] / 2 <= plan["seconds"] <= plan["core_seconds"]
