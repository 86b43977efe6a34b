"""Runs own their directory: one output folder holds one run.

- ``check_output_dir``: before any work, a fresh run refuses a folder holding another run's checkpoints or a
  trained model; ``resume`` continues the run whose checkpoints are there, ``overwrite`` starts over.
- ``resume_conflicts``: a resumed run keeps its saved config; a setting that differs from it is an error,
  except the bookkeeping ones (what is shown, saved and evaluated), which never change the weights.
- ``staging_path`` / ``publish``: the final directory is written to a hidden sibling and renamed into place
  (the old one renamed aside first, deleted last), so a failed export leaves the previous directory as it was
  and a reader never sees a torn one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator

from ..errors import InputError
from .checkpoints import PREFIX, TEMPORARY, fsync_dir
from .config import TrainConfig
from .distributed import barrier

CHECKPOINTS = "checkpoints"
PLOT = "training_curves.png"
#: files only a finished run (or an exported model) leaves in its folder
MODEL_MARKS = ("rdfast_config.json", "train_history.json")
#: settings a resumed run may change: they decide what is shown, saved and evaluated, never the weights
BOOKKEEPING = ("progress", "save_every", "keep_checkpoints", "eval_every")


def check_output_dir(path: str | os.PathLike, resume: str | os.PathLike | None = None, overwrite: bool = False,
                     *, cli: bool = False) -> None:
    """Refuse an output folder that belongs to another run, before any work.

    A fresh run needs a new or empty folder (an empty ``checkpoints/`` or a plot left by a run that died
    before its first checkpoint count as empty). ``resume`` continues the run whose checkpoints the folder
    holds; ``overwrite`` replaces a folder that holds an rdfast run or model (never any other folder).

    Args:
        path: the run's output folder.
        resume: None, "auto" or a checkpoint folder (as ``Trainer.train`` takes it).
        overwrite: start over in a folder holding another run.
        cli: word the advice as command-line flags (``--resume``) rather than arguments (``resume="auto"``).
    Raises:
        InputError naming the folder and what it holds.
    """
    path = os.fspath(path)
    flag = "--output" if cli else "output_dir"
    advice = ("--resume", "--overwrite") if cli else ("resume='auto'", "overwrite=True")
    if resume and overwrite:
        raise InputError(f"pass {advice[0]} or {advice[1]}, not both", field=flag)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{path} is a file, not a folder", field=flag)
    if not os.path.isdir(path):
        return
    ckpt_dir = os.path.join(path, CHECKPOINTS)
    saved = sorted(n for n in os.listdir(ckpt_dir) if not n.startswith(TEMPORARY)) \
        if os.path.isdir(ckpt_dir) else []
    trained = [n for n in MODEL_MARKS if os.path.isfile(os.path.join(path, n))]
    others = sorted(set(os.listdir(path)) - {CHECKPOINTS, PLOT} - set(trained))
    if overwrite:
        if others and not (saved or trained):
            raise InputError(f"{path} holds {others[0]!r} and is no rdfast training output; {advice[1]} replaces "
                             "only those: choose a new or empty folder", field=flag)
        return
    if saved:
        if not resume:
            newest = [n for n in saved if n.startswith(PREFIX)] or saved
            raise InputError(f"{path} holds another run's checkpoints (newest {newest[-1]}): pass {advice[0]} "
                             f"to continue that run or {advice[1]} to start over", field=flag)
        if resume != "auto" and os.path.realpath(os.path.dirname(os.path.abspath(resume))) != \
                os.path.realpath(ckpt_dir):
            raise InputError(f"{path} holds checkpoints of another run than {os.fspath(resume)} (newest "
                             f"{saved[-1]}): resume from one of those, or pass {advice[1]}", field=flag)
        return
    if trained:
        why = "a trained model and no checkpoint to resume from" if resume else "a trained model"
        raise InputError(f"{path} holds {why} ({trained[0]}): pass {advice[1]} to replace it", field=flag)
    if others:
        raise InputError(f"{path} is not empty (it holds {others[0]!r}): choose a new or empty folder", field=flag)


def saved_config(state: dict) -> TrainConfig:
    """The TrainConfig a checkpoint's ``trainer_state.json`` recorded (fields it lacks keep their defaults).

    Args:
        state: the checkpoint's state (its ``config`` entry is read).
    Returns:
        The saved run's TrainConfig.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in (state.get("config") or {}).items() if k in names})


def resume_conflicts(config: TrainConfig, saved: TrainConfig, fields=None) -> list[tuple[str, object, object]]:
    """The settings of ``config`` that differ from the run being resumed (bookkeeping ones excepted).

    Args:
        config: this run's TrainConfig.
        saved: the resumed run's (``saved_config``).
        fields: the field names to compare (default: every field).
    Returns:
        (field, this run's value, the saved value) for each conflict.
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)] if fields is None else list(fields)
    return [(n, getattr(config, n), getattr(saved, n)) for n in names
            if n not in BOOKKEEPING and getattr(config, n) != getattr(saved, n)]


def check_resumable(config: TrainConfig, contents: dict) -> None:
    """Raise unless ``config`` is the saved config of the checkpoint it resumes (bookkeeping aside).

    Args:
        config: this run's TrainConfig.
        contents: the checkpoint (``read_checkpoint``'s result: its ``path`` and ``state``).
    Raises:
        InputError naming each differing setting with both values.
    """
    conflicts = resume_conflicts(config, saved_config(contents["state"]))
    if conflicts:
        said = "; ".join(f"{name}={mine!r} here, {theirs!r} in the run" for name, mine, theirs in conflicts)
        raise InputError(f"{contents['path']}: this config differs from the run it resumes ({said}): resume with "
                         "the run's settings, or start over with overwrite", field="resume")


def staging_path(final: str | os.PathLike) -> str:
    """The hidden sibling a final directory is written to before ``publish`` renames it into place."""
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial")


def publish(staged: str, final: str | os.PathLike, carry: tuple[str, ...] = (CHECKPOINTS,)) -> None:
    """Rename a complete ``staged`` directory to ``final``, replacing what was there.

    The entries of the old ``final`` named in ``carry`` (the run's checkpoints) move into the new one first;
    then the old directory is renamed aside, the new one renamed in and the old one deleted. Only renames
    happen between the first change and the new directory being in place, and nothing is deleted before it.

    Args:
        staged: the complete new directory (``staging_path(final)``).
        final: where it goes.
        carry: entries of the old directory kept in the new one.
    """
    final = os.path.abspath(final)
    if os.path.isdir(final):
        for name in carry:
            if os.path.exists(os.path.join(final, name)) and not os.path.exists(os.path.join(staged, name)):
                os.replace(os.path.join(final, name), os.path.join(staged, name))
        aside = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(os.path.dirname(final))


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike, rank: int = 0) -> Iterator[str]:
    """A fresh staging folder for ``final``: renamed into place (``publish``) when the block succeeds, deleted
    when it fails. Collective; rank 0 owns the folder.

    Args:
        final: the directory being written.
        rank: this process's rank.
    Yields:
        The staging folder's path (write everything ``final`` should hold into it).
    """
    staged = staging_path(final)
    if rank == 0:
        shutil.rmtree(staged, ignore_errors=True)  # a failed export's leftovers
        os.makedirs(staged)
    try:
        yield staged
        barrier()
    except BaseException:
        if rank == 0:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    if rank == 0:
        publish(staged, final)
    barrier()
