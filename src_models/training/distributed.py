"""Data-parallel training across processes: what :mod:`src_models.training.train` needs under ``torchrun``.

One process per GPU (or per CPU worker), started by ``torchrun`` (single node or multi-node
rendezvous); each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from its environment, joins
the process group (NCCL on CUDA, gloo on the CPU) and trains a shard of every global batch:

* **Sharding.**  ``--batch`` is the *global* batch.  Every rank draws the random numbers of the
  whole global batch from the same generator (same seed, same state, restored from the same
  checkpoint) and keeps samples ``[rank·B/W, (rank+1)·B/W)``.  This is what a
  ``DistributedSampler`` with ``set_epoch`` gives a map-style data set (all ranks agree on one
  shuffled order per epoch and take disjoint parts of it); here the random-crop stream is
  infinite, so the "epoch" is one optimiser step: the order depends on the seed and the step only,
  never on the world size.  The data position is therefore the step number plus one generator
  state, and a run resumes exactly with any number of processes.
* **Gradient accumulation.**  A rank's shard is cut into micro-batches of at most
  ``micro_batch`` samples; gradients of all but the last are kept local (``no_sync``).  Each
  micro-batch's loss is weighted by its share of the global batch, so the averaged gradient is
  the gradient of the global batch's mean loss whatever the world size, shard sizes or
  micro-batch size.
* **DistributedDataParallel** averages the gradients (overlapping communication with the
  backward pass); clipping and the AdamW step then see the same gradients on every rank.
* **Rank 0 only**: the EMA copy, the progress bar, the CSV log, checkpoints (written to a
  temporary folder, fsync'd, renamed) and the model directory.

A plain process (no ``torchrun``, or ``torchrun`` with one process) gets ``Parallel()`` (world
size 1, no process group) and trains exactly as before.
"""
from __future__ import annotations

import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from src_models.errors import DiffInfiniteError


class ParallelError(DiffInfiniteError, ValueError):
    """A distributed launch that cannot work as asked (message says why)."""


@dataclass
class Parallel:
    """This process's place in the job.  ``backend`` is None for a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None and self.world > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's samples ``[lo, hi)`` of a global batch of ``n`` (sizes differ by at most one)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, value: float) -> float:
        """The sum of ``value`` over all ranks (float64)."""
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def agree(self, value, what: str) -> None:
        """Check that every rank sees the same ``value`` (e.g. the last checkpoint on disk);
        raise :class:`ParallelError` on every rank when they differ."""
        if not self.active:
            return
        import torch.distributed as dist

        values = [None] * self.world
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            seen = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ParallelError(f"the processes disagree about {what} ({seen}); the work directory must be on a "
                                f"file system every node sees, and every node needs the same data")

    def wrap(self, model: torch.nn.Module, find_unused: bool = False):
        """A DistributedDataParallel around ``model`` for :meth:`forward` calls, or None (one process)."""
        if not self.active:
            return None
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(_Call(model), device_ids=None, find_unused_parameters=find_unused)

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.backend = None


class _Call(torch.nn.Module):
    """Holds the trained module so DDP sees its parameters; ``forward(fn, *args)`` runs a loss
    function that uses the module directly (the training stages call submodules such as
    ``codec.encode_raw``, not one ``forward``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


def no_sync(ddp, last: bool):
    """Context for one micro-batch: gradients stay local except on the last one."""
    return ddp.no_sync() if (ddp is not None and not last) else nullcontext()


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the same variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup(device_arg: str, timeout_s: float = 1800.0) -> Parallel:
    """Read the launcher's environment, pick this rank's device and join the process group.

    ``device_arg``: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``; under torchrun each
    process uses GPU ``LOCAL_RANK``, so an explicit ``cuda:N`` is refused there.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    name = (device_arg or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ParallelError(f"bad --device {device_arg!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParallelError("--device cuda given but no CUDA device is available")
    if world <= 1:
        return Parallel(device=device)
    if device.type not in ("cpu", "cuda"):
        raise ParallelError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    if device.type == "cuda":
        if device.index is not None:
            raise ParallelError(f"--device {device_arg} under torchrun: each process uses the GPU of its LOCAL_RANK; "
                                f"give --device cuda (or auto)")
        if local >= torch.cuda.device_count():
            raise ParallelError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); "
                                f"start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return Parallel(rank=rank, world=world, local_rank=local, backend=backend, device=device)


def micro_ranges(n: int, micro: int | None) -> list[tuple[int, int]]:
    """``[0, n)`` cut into consecutive ranges of at most ``micro`` (all of it when None)."""
    step = n if not micro or micro >= n else int(micro)
    return [(i, min(n, i + step)) for i in range(0, n, step)]
