"""Training checkpoints: trainable weights, AdamW state, LR schedule, every rank's RNG, progress.

A checkpoint folder ``checkpoint-<step>`` holds

- ``trainable.safetensors``: the trainable parameters, full (unsharded);
- ``optimizer.safetensors``: the AdamW state, full, as ``<parameter name>::<key>`` tensors;
- ``rng-rank<r>.safetensors``: rank r's torch (CPU and CUDA) RNG state, Python's and numpy's in metadata;
- ``trainer_state.json``: the step, history, config, the optimizer's parameter groups and the scheduler.

Weights and optimizer state go through ``torch.distributed.checkpoint.state_dict`` with full state dicts, so
one format serves one process, DDP and FSDP2 (whose shards it gathers on save and redistributes on load).
Folders are written under a temporary name and renamed (atomic): a reader sees no checkpoint or a complete
one. Nothing is pickled. Every file is read (``read_checkpoint``) before anything is restored, so a damaged
checkpoint changes nothing and ``read_latest`` falls back to the one before it.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..errors import InputError
from .distributed import all_reduce, barrier

PREFIX = "checkpoint-"
TEMPORARY = ".tmp-"
STATE_FILE = "trainer_state.json"
#: gathered to full tensors on rank 0 only (other ranks get empty dicts), on the CPU
SAVE_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
#: every rank passes the full tensors; each keeps its own shard. Frozen weights are not in the file.
LOAD_OPTIONS = StateDictOptions(full_state_dict=True, strict=False)


def list_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Complete checkpoint folders under ``directory``, oldest first (temporary folders never count).

    Args:
        directory: a run's ``checkpoints`` folder (it need not exist).
    Returns:
        The paths of its complete ``checkpoint-<step>`` folders, by step.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        complete = os.path.isfile(os.path.join(directory, name, STATE_FILE))
        if name.startswith(PREFIX) and name[len(PREFIX):].isdigit() and complete:
            found.append((int(name[len(PREFIX):]), os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


def remove_partial(directory: str | os.PathLike) -> None:
    """Delete the temporary folders a run killed while writing a checkpoint left in ``directory``."""
    for name in os.listdir(directory):
        if name.startswith(TEMPORARY):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def save_checkpoint(directory: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, names: list[str], progress: dict, *, rank: int, world: int,
                    device: torch.device, keep: int) -> str:
    """Write ``directory/checkpoint-<step>`` atomically and keep the newest ``keep``. Collective.

    Args:
        directory: the run's ``checkpoints`` folder (it exists).
        step: optimizer steps done.
        model: the trained module as wrapped (plain, DDP or FSDP2).
        optimizer: its optimizer; scheduler: its LR scheduler (``state_dict`` / ``load_state_dict``).
        names: the trainable parameters' names (the module's own, unwrapped), in optimizer order.
        progress: JSON-ready data restored by ``load_checkpoint`` (history, evaluations, config).
        rank, world, device: this process's rank, the number of processes, this rank's device.
        keep: checkpoints kept (0: all).
    Returns:
        The checkpoint folder's path.
    """
    directory = os.fspath(directory)
    name = f"{PREFIX}{step:08d}"
    tmp, final = os.path.join(directory, TEMPORARY + name), os.path.join(directory, name)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    weights = get_model_state_dict(model, options=SAVE_OPTIONS)
    opt = get_optimizer_state_dict(model, optimizer, options=SAVE_OPTIONS)
    rng, meta = rng_state(device)
    save_tensors(rng, os.path.join(tmp, f"rng-rank{rank}.safetensors"), meta)
    if rank == 0:
        missing = set(names) - set(weights)
        if missing:
            raise RuntimeError(f"the model's state dict lacks trainable parameters {sorted(missing)[:3]}")
        save_tensors({n: weights[n] for n in names}, os.path.join(tmp, "trainable.safetensors"))
        tensors, scalars = {}, {}
        for pname, st in opt["state"].items():
            for key, value in st.items():
                (tensors if isinstance(value, torch.Tensor) else scalars)[f"{pname}::{key}"] = value
        save_tensors(tensors, os.path.join(tmp, "optimizer.safetensors"))
        write_json({**progress, "step": step, "world_size": world, "param_names": names,
                    "param_groups": opt["param_groups"], "optimizer_scalars": scalars,
                    "scheduler": scheduler.state_dict()}, os.path.join(tmp, STATE_FILE))
    barrier()
    if rank == 0:
        fsync_dir(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: a reader sees no checkpoint or a complete one
        fsync_dir(directory)
        for old in list_checkpoints(directory)[: -keep or None]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_state(path: str | os.PathLike) -> dict:
    """A checkpoint folder's ``trainer_state.json`` (its step, config and progress), without the tensors.

    Args:
        path: a ``checkpoint-<step>`` folder.
    Returns:
        The parsed state.
    Raises:
        InputError naming the file when it is missing or not a JSON object.
    """
    file = os.path.join(os.fspath(path), STATE_FILE)
    try:
        with open(file) as fh:
            state = json.load(fh)
    except (OSError, ValueError) as err:
        raise InputError(f"{file}: unreadable checkpoint file ({err})") from err
    if not isinstance(state, dict):
        raise InputError(f"{file}: not a JSON object")
    return state


def read_checkpoint(path: str | os.PathLike, rank: int = 0) -> dict:
    """Read every file of a checkpoint folder this rank needs, changing nothing.

    Args:
        path: a ``checkpoint-<step>`` folder.
        rank: this process's rank (its RNG file is read).
    Returns:
        {"path", "state" (``trainer_state.json``), "optimizer", "trainable", "rng", "rng_meta"}.
    Raises:
        InputError naming the file that is missing, truncated or not valid JSON / safetensors.
    """
    from safetensors import SafetensorError, safe_open  # heavy
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such checkpoint folder")
    out = {"path": path, "state": read_state(path)}
    current = os.path.join(path, STATE_FILE)
    try:
        for key in ("step", "world_size", "param_names", "param_groups", "optimizer_scalars", "scheduler"):
            if key not in out["state"]:
                raise ValueError(f"no {key!r} entry")
        for key, name in (("optimizer", "optimizer.safetensors"), ("trainable", "trainable.safetensors"),
                          ("rng", f"rng-rank{rank}.safetensors")):
            current = os.path.join(path, name)
            out[key] = load_file(current)
        with safe_open(current, "pt") as fh:
            out["rng_meta"] = fh.metadata()
    except (OSError, ValueError, SafetensorError) as err:
        raise InputError(f"{current}: unreadable checkpoint file ({err})") from err
    return out


def read_latest(directory: str | os.PathLike, rank: int = 0, device: torch.device | None = None,
                log=None) -> dict | None:
    """The newest checkpoint under ``directory`` that every rank reads whole (``read_checkpoint``'s result).

    A damaged one is reported (naming its bad file) and the previous one tried. Collective.

    Args:
        directory: a run's ``checkpoints`` folder.
        rank: this process's rank; device: its device (the ranks agree through an all-reduce on it).
        log: where a damaged checkpoint is reported (None: nowhere).
    Returns:
        The newest valid checkpoint's contents, or None when there is no checkpoint at all.
    Raises:
        InputError naming ``directory`` when there are checkpoints and none of them is valid.
    """
    found = list_checkpoints(directory)
    for path in reversed(found):
        contents, why = None, None
        try:
            contents = read_checkpoint(path, rank)
        except InputError as err:
            why = str(err)
        failed = all_reduce(torch.tensor([0.0 if why is None else 1.0], device=device))[0].item()
        if not failed:
            return contents
        if why is not None and log is not None:
            print(f"{why}; trying the checkpoint before it", file=log)
    if found:
        raise InputError(f"no valid checkpoint in {os.fspath(directory)} (each of {len(found)} is damaged; see "
                         "above): pass --overwrite / overwrite=True to start over")
    return None


def restore_checkpoint(contents: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                       names: list[str], *, world: int, device: torch.device) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG from ``read_checkpoint``'s result.

    Args:
        contents: what ``read_checkpoint`` (or ``read_latest``) returned.
        model, optimizer, scheduler, names: as for ``save_checkpoint`` (the same run configuration).
        world, device: the number of processes, this rank's device.
    Returns:
        The saved ``trainer_state.json`` (``step``, ``world_size`` and the ``progress`` saved with it).
    Raises:
        ValueError when the checkpoint was written by another number of processes or another set of
        trainable parameters.
    """
    path, state = contents["path"], contents["state"]
    if state["world_size"] != world:
        raise ValueError(f"{path} was written by {state['world_size']} processes, this run has {world}: "
                         "resuming bitwise needs the same split (same data order, same RNG streams)")
    if state["param_names"] != names:
        raise ValueError(f"{path}: its trainable parameters differ from this run's (another config?)")
    missing = set(names) - set(contents["trainable"])
    if missing:
        raise InputError(f"{path}: trainable.safetensors lacks {sorted(missing)[:3]}")
    opt_state = {}
    for key, value in list(contents["optimizer"].items()) + list(state["optimizer_scalars"].items()):
        pname, field_name = key.rsplit("::", 1)
        opt_state.setdefault(pname, {})[field_name] = value
    # the optimizer first: loading into a fresh one runs a zero-lr step to create its state
    set_optimizer_state_dict(model, optimizer, {"state": opt_state, "param_groups": state["param_groups"]},
                             options=LOAD_OPTIONS)
    set_model_state_dict(model, contents["trainable"], options=LOAD_OPTIONS)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(contents["rng"], contents["rng_meta"], device)
    return state


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    names: list[str], *, rank: int, world: int, device: torch.device) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG from a checkpoint folder. Every rank calls.

    Args:
        path: a ``checkpoint-<step>`` folder.
        model, optimizer, scheduler, names: as for ``save_checkpoint`` (the same run configuration).
        rank, world, device: this process's rank, the number of processes, this rank's device.
    Returns:
        The saved ``trainer_state.json`` (``step``, ``world_size`` and the ``progress`` saved with it).
    Raises:
        InputError naming a damaged file; ValueError when the checkpoint was written by another number of
        processes or another set of trainable parameters.
    """
    return restore_checkpoint(read_checkpoint(path, rank), model, optimizer, scheduler, names, world=world,
                              device=device)


# ----------------------------------------------------------------------------------------------------
# Atomic files and RNG state


def fsync_dir(path: str) -> None:
    """Flush a folder's entries to disk (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_tensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (copied to the CPU, contiguous) as safetensors and flush the file to disk."""
    from safetensors.torch import save_file  # heavy

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_json(obj, path: str) -> None:
    """Write ``obj`` as JSON and flush the file to disk."""
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states: (torch tensors, {"python", "numpy"} as JSON strings for metadata)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    meta = {"python": json.dumps(random.getstate()),
            "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]])}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str], device: torch.device) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    py = json.loads(meta["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = json.loads(meta["numpy"])
    np.random.set_state((npv[0], np.array(npv[1], dtype=np.uint32), *npv[2:]))
