"""Process-group helpers for training under torchrun: DDP (gloo on CPU, NCCL on CUDA) or FSDP2.

Every function here works unchanged in a single process (no process group): collectives become no-ops and
wrapping returns the module itself.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..cpu_speed import restore


def process_group():
    """``torch.distributed`` when a process group is initialised, else None."""
    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; initialises the process group once.

    Returns:
        rank, world size and this rank's device (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1:
        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in one process); returns ``t``."""
    group = process_group()
    if group is not None:
        group.all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    group = process_group()
    if group is not None:
        group.barrier()


def wrap(module: nn.Module, strategy: str, world: int, device: torch.device,
         layers: list[nn.Module] = ()) -> nn.Module:
    """The module the training loop runs: FSDP2, DDP, or ``module`` itself in one process.

    Args:
        module: the module holding every trained parameter.
        strategy: "ddp" or "fsdp" (FSDP2 ``fully_shard``: each of ``layers``, then the rest).
        world: number of processes.
        device: this rank's device.
        layers: the decoder layers, sharded one by one under FSDP2.
    Returns:
        The wrapped module (FSDP2 shards ``module`` in place and returns it).
    """
    if strategy == "fsdp":
        if world < 2:
            raise RuntimeError("strategy='fsdp' shards over processes: launch with torchrun (2 or more)")
        from torch.distributed.device_mesh import init_device_mesh  # optional
        from torch.distributed.fsdp import fully_shard

        restore(module)  # packed oneDNN weights (rdfast.cpu_speed) would keep every unsharded weight in memory
        mesh = init_device_mesh(device.type, (world,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        return fully_shard(module, mesh=mesh)
    if world > 1:
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, strategy: str, world: int, sync: bool) -> Iterator[None]:
    """Accumulating micro-batches: reduce gradients across ranks only when ``sync`` (the last micro-batch).

    Args:
        wrapped: the module ``wrap`` returned.
        strategy: "ddp" or "fsdp".
        world: number of processes (one process: nothing to do).
        sync: whether this backward reduces gradients.
    """
    if sync or world == 1:
        yield
    elif strategy == "fsdp":
        wrapped.set_requires_gradient_sync(False, recurse=True)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True, recurse=True)
    else:
        with wrapped.no_sync():
            yield


def unshard_all(wrapped: nn.Module) -> list[nn.Module]:
    """FSDP2: all-gather the full weights on every rank and keep them so (collective); returns the modules.

    Args:
        wrapped: the module ``wrap`` returned (any module: those not sharded are left alone).
    Returns:
        The FSDP2 modules now unsharded (``reshard()`` each to shard them again).
    """
    from torch.distributed.fsdp import FSDPModule  # optional

    sharded = [m for m in wrapped.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    return sharded


@contextlib.contextmanager
def full_weights(wrapped: nn.Module, strategy: str) -> Iterator[None]:
    """FSDP2: every rank holds the full (unsharded) weights inside, so evaluation and saving run the model's
    plain forward with no collectives (ranks may run different numbers of forwards). Others: nothing.

    Args:
        wrapped: the module ``wrap`` returned.
        strategy: "ddp" or "fsdp".
    """
    if strategy != "fsdp":
        yield
        return
    sharded = unshard_all(wrapped)
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
