"""Data parallelism over ``torch.distributed``: one process per device, one trace.

    torchrun --nproc_per_node 4 -m minigrpo train ...                       # 4 GPUs (nccl), or CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 4 -m minigrpo train ...   # the same through accelerate

Every rank holds the whole model. Each rollout's P prompts are drawn with the same seed on
every rank and rank r keeps its block of P / W of them, so the W ranks sample different
completions of one rollout. After the micro-batches of an optimizer step the accumulated
gradients are averaged across ranks (all-reduce), so every rank takes the same step and the
weights stay identical. Groups and probes are gathered to rank 0, which alone writes the
trace, the checkpoints and the final model.

Why an all-reduce of the gradients and not a ``DistributedDataParallel`` wrapper: the reduce
moves the same bytes as DDP under ``no_sync`` over the accumulation window (once per optimizer
step), the model stays a plain Hugging Face module (``generate``, ``save_pretrained``, the probe
forwards and PPO's value model need no unwrapping), and parameters that get no gradient on a
rank (PPO's shared critic) need no ``find_unused_parameters``. What it gives up is DDP's overlap
of communication with the backward pass, which matters little at the sizes minigrpo is for.

Outside a launcher (no ``WORLD_SIZE`` > 1 in the environment) every helper is a no-op on one rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .probes import pick_probe_rows

BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in flat buckets of at most this many elements


@dataclass
class Dist:
    """Where this process sits: rank, world size, local rank (its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ set-up
    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` under a launcher with GPUs, else ``device``."""
        if device.type == "cuda" and self.active:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    # ------------------------------------------------------------------ collectives
    def broadcast_modules(self, modules) -> None:
        """Copy rank 0's parameters and buffers to every rank (identical start, whatever the seeds)."""
        if not self.active:
            return
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, params) -> None:
        """grad ← mean over ranks of grad, for every parameter (a missing grad counts as zeros)."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p.grad)
            size += p.grad.numel()
            if size >= BUCKET_ELEMENTS:
                self._average_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._average_bucket(bucket)

    def _average_bucket(self, grads: list[torch.Tensor]) -> None:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for same in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in same])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for g in same:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def reduce_stats(self, sums: dict[str, float], averaged: tuple[str, ...] = ()) -> dict[str, float]:
        """Sum every value over ranks; the keys in ``averaged`` are divided by the world size."""
        if not self.active or not sums:
            return dict(sums)
        keys = sorted(sums)
        values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(values)
        out = dict(zip(keys, values.tolist()))
        return {k: v / self.world_size if k in averaged else v for k, v in out.items()}

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value."""
        return self.reduce_stats(values, averaged=tuple(values))

    def gather(self, items: list) -> list | None:
        """Rank 0: every rank's list, concatenated in rank order. Other ranks: None."""
        if not self.active:
            return list(items)
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(list(items), parts, dst=0)
        return [x for part in parts for x in part] if self.is_main else None

    def all_gather(self, items: list) -> list[list]:
        """Every rank's list, on every rank, in rank order."""
        if not self.active:
            return [list(items)]
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, list(items))
        return parts

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def in_sync(self, modules) -> bool:
        """True when every rank holds bit-identical parameters (compared through per-tensor float64 checksums)."""
        if not self.active:
            return True
        sums = [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                for m in modules for p in m.parameters()]
        mine = torch.cat(sums).cpu().tolist() if sums else []
        return all(other == mine for other in self.all_gather(mine))

    def _comm_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ probes
    def pick_probe_rows(self, advantages: torch.Tensor, n: int) -> list[int]:
        """``probes.pick_probe_rows`` over the update's rows of ALL ranks; returns this rank's picks.

        The ranks' rows are concatenated in rank order, the usual choice (most positive, most
        negative advantage, alternately) is made once over all of them, and each rank gets
        back the indices into its own ``advantages`` that were picked.
        """
        if not self.active:
            return pick_probe_rows(advantages, n)
        parts = self.all_gather(advantages.detach().float().cpu().tolist())
        everything = torch.tensor([a for part in parts for a in part], dtype=torch.float32)
        start = sum(len(part) for part in parts[:self.rank])
        end = start + len(parts[self.rank])
        return [i - start for i in pick_probe_rows(everything, n) if start <= i < end]


def setup(backend: str | None = None) -> Dist:
    """Join the process group a launcher describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``).

    An existing group (started by accelerate or by the caller) is used as is. The backend is
    nccl when CUDA is available, gloo otherwise. One process: ``Dist()`` and nothing else.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
