"""Runs own their directory: a fresh run refuses another run's checkpoints (``resume`` continues that run with
its saved config, ``overwrite`` starts clean); the final directory is staged and renamed into place, so a
failed export leaves the previous one intact; a corrupt latest checkpoint falls back to the previous one."""
import hashlib
import io
import json
import os
import shutil

import pytest

from rdfast.errors import InputError
from rdfast.testing import tiny_checkpoint
from rdfast.train import TrainConfig, Trainer

from .common import records

#: the cheapest real run: full fine-tuning (no peft), one record per step, one image order
FAST = dict(finetune="full", batch_size=1, both_orders=False, progress=False, learning_rate=1e-3)


class Killed(Exception):
    """Stands for SIGKILL after a step (the checkpoint of that step is on disk)."""


def kill_at(step):
    def callback(trainer, done, logs):
        if done == step:
            raise Killed(done)
    return callback


def run(out, *, seed, steps, log=None, callbacks=(), **kwargs):
    config = TrainConfig(seed=seed, max_steps=steps, save_every=1, **FAST)
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, records(3, seed), output_dir=out,
                      log=log or io.StringIO(), callbacks=callbacks)
    return trainer


def files(folder, skip=("checkpoints",)):
    """{relative path: sha256} of every file under ``folder`` (``skip``ped top-level entries left out)."""
    out = {}
    for root, dirs, names in os.walk(folder):
        if root == os.fspath(folder):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def checkpoints_of(out):
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A finished run (seed 7, 3 steps, checkpoints of steps 2 and 3 kept) to copy into each test."""
    out = tmp_path_factory.mktemp("old") / "run"
    run(out, seed=7, steps=3).train()
    return out


def copy_of(old_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    return out


def test_fresh_run_refuses_another_runs_checkpoints_and_overwrite_starts_clean(old_run, tmp_path):
    """Before: the fresh run's checkpoint-1 was deleted at once (the old run's steps 2 and 3 sort after it),
    and a --resume after a kill loaded the old run (another seed)."""
    out = copy_of(old_run, tmp_path)
    before = files(out, skip=())
    trainer = run(out, seed=11, steps=2, callbacks=[kill_at(1)])
    with pytest.raises(InputError, match="checkpoint-00000003.*resume.*overwrite"):
        trainer.train()
    assert files(out, skip=()) == before  # nothing touched
    with pytest.raises(Killed):
        trainer.train(overwrite=True)
    assert checkpoints_of(out) == ["checkpoint-00000001"]  # its own, the old run's gone
    log = io.StringIO()
    result = run(out, seed=11, steps=2, log=log).train(resume="auto")
    assert "checkpoint-00000001 at step 1" in log.getvalue() and result["step"] == 2
    history = json.loads((out / "train_history.json").read_text())
    assert history["config"]["seed"] == 11 and [h["step"] for h in history["history"]] == [1, 2]


def test_resume_with_a_changed_setting_is_an_error_naming_it(old_run, tmp_path):
    out = copy_of(old_run, tmp_path)
    config = TrainConfig(seed=7, max_steps=3, save_every=1, **{**FAST, "learning_rate": 5e-2})
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, records(3, 7), output_dir=out, log=io.StringIO())
    with pytest.raises(InputError, match="learning_rate"):
        trainer.train(resume="auto")
    with pytest.raises(InputError, match="not both"):
        trainer.train(resume="auto", overwrite=True)


def test_a_failed_export_leaves_the_previous_model_intact(old_run, tmp_path, monkeypatch):
    """Before: the model was written in place, so a full disk left new weights beside the old config."""
    from rdfast.reward_config import RewardConfig

    out = copy_of(old_run, tmp_path)
    before = files(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(RewardConfig, "save", disk_full)
        with pytest.raises(OSError, match="No space"):
            run(out, seed=11, steps=1).train(overwrite=True)
        assert files(out) == before  # the previous model, byte for byte
        assert sorted(os.listdir(tmp_path)) == ["run"]  # no staged or set-aside folder left behind
        fresh = tmp_path / "fresh"
        with pytest.raises(OSError, match="No space"):
            run(fresh, seed=11, steps=1).train()
        assert not (fresh / "config.json").exists() and not (fresh / "tokenizer.json").exists()
    shutil.rmtree(tmp_path / "fresh")
    run(out, seed=11, steps=1).train(overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert json.loads((out / "train_history.json").read_text())["config"]["seed"] == 11
    assert checkpoints_of(out) == ["checkpoint-00000001"]  # the run's checkpoints moved with the new model
    assert (out / "rdfast_config.json").exists() and (out / "model.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncated weights", "bad json"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(old_run, tmp_path, damage):
    out = copy_of(old_run, tmp_path)
    latest = out / "checkpoints" / "checkpoint-00000003"
    bad = latest / ("trainable.safetensors" if damage == "truncated weights" else "trainer_state.json")
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    log = io.StringIO()
    run(out, seed=7, steps=3, log=log).train(resume="auto")
    assert str(bad) in log.getvalue()
    assert "checkpoint-00000002 at step 2" in log.getvalue()
    # every checkpoint bad: an error naming the folder
    for folder in (out / "checkpoints").iterdir():
        (folder / "trainable.safetensors").write_bytes(b"\0" * 3)
    with pytest.raises(InputError, match="no valid checkpoint in .*checkpoints"):
        run(out, seed=7, steps=3).train(resume="auto")
