"""Checkpoint files in one process: weights, AdamW state, LR schedule and RNG restore bitwise; folders appear
atomically and only the newest are kept."""
import os

import pytest
import torch
from torch import nn

from rdfast.train import TrainConfig
from rdfast.train.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from rdfast.train.trainer import lr_scheduler

CPU = torch.device("cpu")


def setup(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    model[0].weight.requires_grad_(False)  # a frozen weight: not in the checkpoint
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    scheduler = lr_scheduler(optimizer, TrainConfig(lr_schedule="cosine", warmup_steps=2, max_steps=6))
    return model, optimizer, scheduler, names


def step(model, optimizer, scheduler):
    loss = model(torch.randn(4, 5)).square().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def test_save_then_load_resumes_bitwise(tmp_path):
    model, optimizer, scheduler, names = setup(0)
    for _ in range(3):
        step(model, optimizer, scheduler)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = save_checkpoint(folder, 3, model, optimizer, scheduler, names, {"history": [1, 2, 3]}, rank=0, world=1,
                           device=CPU, keep=2)
    assert sorted(os.listdir(path)) == ["optimizer.safetensors", "rng-rank0.safetensors", "trainable.safetensors",
                                        "trainer_state.json"]
    step(model, optimizer, scheduler)  # the uninterrupted run goes on

    other, opt2, sched2, _ = setup(1)  # another initialisation, fresh optimizer and schedule
    other[0].weight.data.copy_(model[0].weight)  # frozen weights come from the base model, not the checkpoint
    state = load_checkpoint(path, other, opt2, sched2, names, rank=0, world=1, device=CPU)
    assert state["step"] == 3 and state["history"] == [1, 2, 3] and sched2.last_epoch == 3
    step(other, opt2, sched2)  # the same batch (RNG restored), the same update
    for (n, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n
    assert opt2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for p, q in zip(optimizer.param_groups[0]["params"], opt2.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], opt2.state[q][key]), key
    with pytest.raises(ValueError, match="this run has 2"):
        load_checkpoint(path, other, opt2, sched2, names, rank=0, world=2, device=CPU)


def test_only_complete_checkpoints_count_and_the_newest_are_kept(tmp_path):
    model, optimizer, scheduler, names = setup(0)
    folder = tmp_path / "checkpoints"
    (folder / ".tmp-checkpoint-00000009").mkdir(parents=True)  # a run killed while writing
    (folder / "checkpoint-00000008").mkdir()  # no trainer_state.json: incomplete
    for s in (1, 2, 3):
        step(model, optimizer, scheduler)
        save_checkpoint(folder, s, model, optimizer, scheduler, names, {}, rank=0, world=1, device=CPU, keep=2)
    assert [os.path.basename(p) for p in list_checkpoints(folder)] == ["checkpoint-00000002", "checkpoint-00000003"]
    assert list_checkpoints(tmp_path / "missing") == []


@pytest.mark.parametrize("damage", ["truncated trainable", "truncated optimizer", "bad json", "no rng file"])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_it_used(tmp_path, damage):
    """Before: the newest checkpoint was loaded blindly (a traceback naming no file) and nothing fell back."""
    import io

    from rdfast.errors import InputError
    from rdfast.train.checkpoints import read_latest

    model, optimizer, scheduler, names = setup(0)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for s in (1, 2, 3):
        step(model, optimizer, scheduler)
        save_checkpoint(folder, s, model, optimizer, scheduler, names, {}, rank=0, world=1, device=CPU, keep=3)
    newest = folder / "checkpoint-00000003"
    bad = newest / {"truncated trainable": "trainable.safetensors", "truncated optimizer": "optimizer.safetensors",
                    "bad json": "trainer_state.json", "no rng file": "rng-rank0.safetensors"}[damage]
    if damage == "no rng file":
        bad.unlink()
    else:
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) - 7])
    log = io.StringIO()
    found = read_latest(folder, log=log)
    assert found["path"] == str(folder / "checkpoint-00000002") and found["state"]["step"] == 2
    assert str(bad) in log.getvalue()
    other, opt2, sched2, _ = setup(1)
    other[0].weight.data.copy_(model[0].weight)
    with pytest.raises(InputError, match=str(bad)):
        load_checkpoint(newest, other, opt2, sched2, names, rank=0, world=1, device=CPU)
    for name in ("checkpoint-00000001", "checkpoint-00000002"):
        (folder / name / "optimizer.safetensors").write_bytes(b"{}")
    with pytest.raises(InputError, match=f"no valid checkpoint in {folder}"):
        read_latest(folder)
    assert read_latest(tmp_path / "none") is None
