"""torch.distributed set-up from torchrun's environment (NCCL on GPUs, gloo on CPU) and the few collectives used."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device  # cuda:LOCAL_RANK or cpu

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run as a single process.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda" (the GPU numbered LOCAL_RANK).
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device; use train.device=cpu or auto")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=target if use_cuda else None)
    return DistContext(rank, world_size, target)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _several_processes() -> bool:
    """Whether this process is one of several in an initialised process group (the collectives below are no-ops
    otherwise)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (the tensor itself when not distributed)."""
    if _several_processes():
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_from_main(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrite each of ``tensors`` in place with rank 0's values (nothing when not distributed): for decisions
    that every rank must share whatever its own numerics gave, such as Q-Ramping's update periods."""
    if _several_processes():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def gather_objects(obj: object) -> list:
    """``obj`` from every rank, in rank order (a one-element list when not distributed)."""
    if not _several_processes():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class ReplicaMismatchError(RuntimeError):
    """State that data-parallel training keeps identical on every rank differs between ranks: a bug, not a setting."""


def fingerprint(tensor: torch.Tensor) -> tuple[int, int]:
    """Two exact integers from the bytes of ``tensor`` (their sum and their position-weighted sum): equal bits give
    equal fingerprints; a change of any byte changes at least one of them. Computed where the tensor lives."""
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).to(torch.int64)
    weights = torch.arange(1, data.numel() + 1, device=data.device, dtype=torch.int64)
    return int(data.sum()), int((data * weights).sum())  # exact up to 2^27 bytes, then wrapping


def check_replicas(state: dict[str, object], when: str) -> None:
    """Raise ReplicaMismatchError naming the entries of ``state`` (name -> tensor or plain value) in which some rank
    differs from rank 0. Every rank must call it (a collective); it does nothing in a single process.

    Used for the state that DDP does not synchronise but each rank updates alike from the all-reduced gradients:
    parameters, quantizer buffers (Q-EMA, Freeze), optimizer moments and Q-Ramping's periods."""
    if not _several_processes():
        return
    local = {name: fingerprint(value) if isinstance(value, torch.Tensor) else repr(value)
             for name, value in state.items()}
    ranks = gather_objects(local)
    differing = [(rank, name) for rank, other in enumerate(ranks[1:], start=1)
                 for name in local if other.get(name) != ranks[0].get(name)]
    if differing:
        names = sorted({name for _, name in differing})
        rank_list = sorted({rank for rank, _ in differing})
        raise ReplicaMismatchError(f"{when}: rank(s) {rank_list} differ from rank 0 in {len(names)} entries, first "
                                   f"{names[:5]}; data-parallel replicas must stay bit-identical")
