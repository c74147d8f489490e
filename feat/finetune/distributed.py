"""Data-parallel fine-tuning over several processes: `torchrun --nproc_per_node N -m feat finetune ...`.

Each process takes its GPU (cuda:LOCAL_RANK; on CPUs, N CPU processes over gloo) and its share of every
global batch; the gradients are summed over the processes once per optimizer step, so a step is the step one
process would take on the whole batch (the loss is normalised by the global batch, not the share). Every
process holds the same weights, evaluates dev the same way and makes the same early-stopping decision; the
first one writes the output folder and the checkpoints.

Not DistributedDataParallel's module wrapper: its gradient hooks expect every process to run a forward pass
per micro-batch, and the last batch of an epoch can leave a process without rows (7 rows on 2 processes in
batches of 4: the second batch gives 3 rows, 2 + 1); here such a process contributes zero gradients. One
flattened all-reduce per optimizer step, after gradient accumulation, instead of DDP's per-bucket overlap
with the backward pass: less traffic, no overlap; a GPU benchmark (benchmarks/gpu.py) has not been run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from feat.errors import InputError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    started: bool = False  # this process group was started by feat (and is destroyed by `close`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, chunk: np.ndarray) -> np.ndarray:
        """This process's rows of a global batch (contiguous, sizes differing by one at most)."""
        return np.array_split(chunk, self.size)[self.rank] if self.size > 1 else chunk

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (a process without rows gives zeros)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset:offset + grad.numel()].view_as(grad)
            offset += grad.numel()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
        return value

    def gather(self, obj) -> list:
        """`obj` of every process, in rank order (small Python objects: RNG states)."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """The first process's `obj` in every process."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


def start(device: str) -> World:
    """The process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...), or one process alone."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size == 1:
        return World()
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    world = World(dist.get_rank(), dist.get_world_size(), started)
    if device.startswith("cuda"):
        devices = world.gather(device)
        if len(set(devices)) < len(devices):
            world.close()
            raise InputError(f"{len(devices)} processes on {len(set(devices))} GPU(s) ({', '.join(devices)}): "
                             "under torchrun use --device auto or cuda, each process takes cuda:LOCAL_RANK")
    if not world.main:
        from feat.console import console

        console.quiet = True  # one process reports; the others would print the same lines again
    return world
