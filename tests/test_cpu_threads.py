"""rdfast/cpu_threads.py: the CPU scoring thread policy, as pure logic with injected load, and its context."""
import pytest
import torch

from rdfast import cpu_threads as C


@pytest.mark.parametrize("torch_threads,cores,others,expected", [
    (2, 2, 0, 2),      # quiet: all of torch's threads
    (2, 2, 1, 1),      # one co-runner on 2 cores: one thread
    (2, 2, 5, 1),      # overloaded: never below 1
    (8, 16, 3, 8),     # capped at torch's setting
    (16, 16, 3.4, 13),  # fractional (load-average fallback) rounds to whole tasks
    (4, 4, -1, 4),     # a miscount below zero is no load
])
def test_free_cores_capped_at_torch_threads(torch_threads, cores, others, expected):
    assert C.choose_threads(torch_threads, cores, others) == expected


@pytest.mark.parametrize("override,expected", [("3", 3), (3, 3), ("0", 2), ("torch", 2), (" ", 1), ("", 1)])
def test_override_wins_over_load(override, expected):
    assert C.choose_threads(2, 2, 1, override) == expected  # without the override: 1 (one co-runner)


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_bad_override_names_the_variable(bad):
    with pytest.raises(ValueError, match=C.ENV_VAR):
        C.choose_threads(2, 2, 0, bad)


def test_environment_variable_is_read(monkeypatch):
    monkeypatch.setenv(C.ENV_VAR, "1")
    assert C.scoring_threads() == 1
    monkeypatch.setenv(C.ENV_VAR, "torch")
    assert C.scoring_threads() == torch.get_num_threads()
    assert C.scoring_threads(threads=1) == 1  # the argument beats the environment


def test_context_sets_and_restores_threads_on_cpu_only(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(C.ENV_VAR, "1")
    with C.cpu_scoring_threads(torch.device("cpu")) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with C.cpu_scoring_threads("cpu"):
            raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == before
    with C.cpu_scoring_threads(torch.device("meta")) as n:
        assert n is None and torch.get_num_threads() == before


def test_nested_blocks_restore_the_users_setting(monkeypatch):
    """An inner block (score inside rank, say) must not restore the outer block's count as the user's."""
    before = torch.get_num_threads()
    monkeypatch.setenv(C.ENV_VAR, "1")
    with C.cpu_scoring_threads("cpu"):
        with C.cpu_scoring_threads("cpu") as inner:
            assert inner == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_others_running_counts_a_busy_process():
    """A spinning child process is counted as another runnable task (the live /proc reading)."""
    import multiprocessing as mp
    import time

    ctx = mp.get_context("fork")
    child = ctx.Process(target=_spin, daemon=True)
    child.start()
    try:
        time.sleep(0.2)
        busy = max(C.others_running() for _ in range(5))
    finally:
        child.terminate()
        child.join(5)
    assert busy >= 1  # the child is running or runnable at every reading


def _spin():
    while True:
        pass

