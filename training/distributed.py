"""Recovery on several processes or machines: PyTorch's DistributedDataParallel under ``torchrun``.

When the process was started by ``torchrun`` (or ``python -m torch.distributed.run``: the
environment holds ``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK`` and the rendezvous address),
:func:`recover <onnx_compress.training.recover.recover>` trains with one student replica per
process:

- the process group is PyTorch's own (``env://``): ``gloo`` on CPU, ``nccl`` when the device is
  CUDA (``--device auto`` with CUDA present, or ``cuda``), each process on ``cuda:LOCAL_RANK``;
- every epoch, the same seeded permutation of the training samples is cut into ``WORLD_SIZE``
  shards of equal length (:meth:`Distributed.shard`, as ``DistributedSampler``: the permutation is
  padded by repeating its start), and each process trains on its shard; ``batch_size`` is per
  process, so one step sees ``WORLD_SIZE x batch_size`` samples (pass ``batch_size / WORLD_SIZE``
  to keep the single-process step);
- gradients are averaged by ``DistributedDataParallel``; the step's loss (for the NaN check and the
  log) and the time limit flag are all-reduced so that every process takes the same decision;
  QAT activation ranges (moving averages per process) are averaged after every epoch;
- validation runs on rank 0 only; its numbers are broadcast, and every process applies the
  same early-stopping rule to them; only rank 0 checks parity, writes the model and reports
  (the CLI's other processes write nothing).

Untested on GPUs (no GPU where this was written): the NCCL path is PyTorch's standard one and
the code keeps tensors on ``Distributed.device``, but it has only run with gloo on CPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from onnx_compress.errors import SettingError
from onnx_compress.optional import require

__all__ = ["Distributed", "from_env", "launched"]

logger = logging.getLogger(__name__)

torch = require("torch", "distributed recovery training")


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclasses.dataclass
class Distributed:
    """This process's place in the group, and the collective operations recovery needs."""

    world: int
    rank: int
    local_rank: int
    device: Any
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, order: np.ndarray) -> np.ndarray:
        """This process's share of ``order`` (same on every process): padded to a multiple of the
        world size by repeating its start, then every ``world``-th sample from ``rank``."""
        total = -(-len(order) // self.world) * self.world
        padded = np.concatenate([order, order[: total - len(order)]]) if total > len(order) else order
        return padded[self.rank::self.world]

    def wrap(self, module: Any) -> Any:
        """``module`` in DistributedDataParallel (buffers are not synced per step: the fixed ones are
        identical, QAT ranges are averaged per epoch with :meth:`average_`)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the processes."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every process."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        torch.distributed.broadcast(tensor, 0)
        return tensor.tolist()

    def average_(self, tensor: Any) -> None:
        """Replace ``tensor`` (in place) by its mean over the processes."""
        torch.distributed.all_reduce(tensor)
        tensor /= self.world

    @property
    def _comm_device(self) -> Any:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def from_env(requested_device: str) -> Distributed | None:
    """The group this process belongs to when started by torchrun (None otherwise); initializes
    the default process group when nobody has yet."""
    if not launched():
        return None
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda_present = torch.cuda.is_available()
    if requested_device == "cuda" and not cuda_present:
        raise SettingError("device='cuda' but torch sees no CUDA device (use --device cpu or auto)")
    cuda = requested_device != "cpu" and cuda_present
    if cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    group = Distributed(world, rank, local_rank, device, owns)
    logger.info("distributed recovery: rank %d of %d (%s, %s)", rank, world,
                torch.distributed.get_backend(), device)
    return group
