"""Evaluation spread over the processes a launcher started (`accelerate launch`, torchrun).

Every process resolves the same candidates in the same order; process r evaluates candidates
r, r + N, r + 2N, ... (the base is the first, so the main process takes it), and the scores are
then exchanged so that every process holds the whole report. A candidate's scores come from one
process with the same settings either way, so they do not depend on N (the thread count, part
of the settings, is the caller's to hold fixed: bfloat16 rounding depends on it).

The scores travel as JSON bytes in a uint8 tensor through torch.distributed (gloo on the CPU,
NCCL on GPUs): nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    def mine(self, index: int) -> bool:
        """Whether the candidate at `index` is this process's to evaluate."""
        return index % self.size == self.rank


def world() -> World:
    """This process's place among the launcher's processes (WORLD_SIZE and RANK, which
    accelerate launch and torchrun set); one process without a launcher."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0") or 0), size)


def _group_device():
    """Join the launcher's process group (once; accelerate's state is shared with training) and
    give the device its collectives run on."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).device


def all_gather_json(payload) -> list:
    """Every process's `payload` (JSON-serializable), in rank order, on every process."""
    import torch
    import torch.distributed as dist

    device = _group_device()
    data = torch.frombuffer(bytearray(json.dumps(payload).encode()), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    chunks = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(s.item())].cpu().tolist())) for c, s in zip(chunks, sizes)]
