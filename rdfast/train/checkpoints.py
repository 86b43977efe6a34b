"""Training checkpoints: trainable weights, AdamW state, LR schedule, every rank's RNG, progress.

A checkpoint folder ``checkpoint-<step>`` holds

- ``trainable.safetensors``: the trainable parameters, full (unsharded);
- ``optimizer.safetensors``: the AdamW state, full, as ``<parameter name>::<key>`` tensors;
- ``rng-rank<r>.safetensors``: rank r's torch (CPU and CUDA) RNG state, Python's and numpy's in metadata;
- ``trainer_state.json``: the step, history, config, the optimizer's parameter groups and the scheduler.

Weights and optimizer state go through ``torch.distributed.checkpoint.state_dict`` with full state dicts, so
one format serves one process, DDP and FSDP2 (whose shards it gathers on save and redistributes on load).
Folders are written under a temporary name and renamed (atomic): a reader sees no checkpoint or a complete
one. Nothing is pickled.
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

from .distributed import barrier

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
        ValueError when the checkpoint was written by another number of processes or another set of
        trainable parameters.
    """
    from safetensors import safe_open  # heavy
    from safetensors.torch import load_file

    path = os.fspath(path)
    with open(os.path.join(path, STATE_FILE)) as fh:
        state = json.load(fh)
    if state["world_size"] != world:
        raise ValueError(f"{path} was written by {state['world_size']} processes, this run has {world}: "
                         "resuming bitwise needs the same split (same data order, same RNG streams)")
    if state["param_names"] != names:
        raise ValueError(f"{path}: its trainable parameters differ from this run's (another config?)")
    opt_state = {}
    tensors = load_file(os.path.join(path, "optimizer.safetensors"))
    for key, value in list(tensors.items()) + list(state["optimizer_scalars"].items()):
        pname, field_name = key.rsplit("::", 1)
        opt_state.setdefault(pname, {})[field_name] = value
    # the optimizer first: loading into a fresh one runs a zero-lr step to create its state
    set_optimizer_state_dict(model, optimizer, {"state": opt_state, "param_groups": state["param_groups"]},
                             options=LOAD_OPTIONS)
    set_model_state_dict(model, load_file(os.path.join(path, "trainable.safetensors")), options=LOAD_OPTIONS)
    scheduler.load_state_dict(state["scheduler"])
    rng_file = os.path.join(path, f"rng-rank{rank}.safetensors")
    with safe_open(rng_file, "pt") as fh:
        meta = fh.metadata()
    set_rng_state(load_file(rng_file), meta, device)
    return state


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
