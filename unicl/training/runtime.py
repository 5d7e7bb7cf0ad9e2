"""Where a training process runs: its rank among the others, its device, and the collectives the loop needs.

``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables)
makes a process one rank of a group; without it, a process is a group of one and no collective is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """One training process.

    Attributes:
        rank: this process's rank (0 without a launcher).
        world_size: number of processes.
        local_rank: rank on this node (picks the CUDA device).
        device: where this rank computes.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one rank is running."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, which writes checkpoints, logs and the final weights."""
        return self.rank == 0

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def sum(self, values: list[float]) -> list[float]:
        """The element-wise sums of ``values`` over the ranks."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def _collective_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def start_runtime(device: str = "auto") -> Runtime:
    """Join the launcher's process group (NCCL on CUDA, gloo on the CPU), or run alone without a launcher.

    Args:
        device: ``"auto"`` (CUDA device ``LOCAL_RANK`` when CUDA is available, else the CPU), ``"cpu"`` or
            ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``); ``"cuda:K"`` pins a single process to device ``K``.

    Raises:
        ValueError: an unknown device, CUDA asked for where there is none, or ``cuda:K`` under a launcher.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        requested = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                 "cpu" if device == "auto" else device)  # fmt: skip
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:K'; got {device!r}") from None
    if requested.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:K'; got {device!r}")
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asks for CUDA, which this machine does not have")
        if requested.index is not None and world_size > 1:
            raise ValueError(f"--device {device} pins one device; under a launcher use 'cuda' (LOCAL_RANK picks)")
        requested = torch.device("cuda", local_rank if requested.index is None else requested.index)
        torch.cuda.set_device(requested)
    if world_size > 1 and not dist.is_initialized():
        if requested.type == "cuda":
            dist.init_process_group("nccl", device_id=requested)
        else:
            dist.init_process_group("gloo")
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=requested)


def stop_runtime() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
