"""Data parallelism under torchrun: the process group, each process's rank and device, the collectives training and sweeps use."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a data-parallel job; one process alone is rank 0 of 1 on the CPU."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process writes the job's files (checkpoints, loss log, benchmark results)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the processes of each one's ``value`` (``value`` itself for one process)."""
        if self.world_size == 1:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process: a decision they all take together, e.g. to stop at a deadline."""
        if self.world_size == 1:
            return flag
        votes = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(votes)
        return bool(votes.item() > 0)

    def parallel(self, module: nn.Module) -> nn.Module:
        """``module`` in torch's DistributedDataParallel (gradients averaged over the processes); itself for one process."""
        if self.world_size == 1:
            return module
        # find_unused_parameters: a forward may leave parameters out (MosaicDiT's token_embed without mosaic tokens)
        return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None,
                                       find_unused_parameters=True)

    def deal(self, items: Sequence[T], work: Callable[[int, T], R]) -> list[R]:
        """``work(index, item)`` of every item, dealt round-robin over the processes; all results, in item order, on each."""
        mine = [(index, work(index, items[index])) for index in range(self.rank, len(items), self.world_size)]
        if self.world_size == 1:
            return [result for _, result in mine]
        parts: list[list[tuple[int, R]]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(parts, mine)
        return [result for _, result in sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])]


ONE_PROCESS = Ranks()


def _joined_ranks() -> Ranks:
    """This process's Ranks in the process group it has joined."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


@contextmanager
def joined() -> Iterator[Ranks]:
    """This process's Ranks in the torchrun job that started it (its process group joined, and left on exit), else one process.

    The backend is NCCL, each process on the GPU of its local rank, when CUDA is available, else gloo on
    the CPU. A process group the caller joined itself is used as it is and left to the caller.
    """
    if dist.is_initialized():
        yield _joined_ranks()
        return
    if "WORLD_SIZE" not in os.environ:  # torchrun sets it: without it this is a plain single-process run
        yield ONE_PROCESS
        return
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"--nproc-per-node: local rank {local} has no GPU of its own on this machine "
                             f"({torch.cuda.device_count()} visible); start at most one process per GPU.")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield _joined_ranks()
    finally:
        dist.destroy_process_group()
