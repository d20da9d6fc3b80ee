"""Training across processes with Hugging Face accelerate: what the trainer's loop needs from it.

The loop stays ours (the reply-only loss, the anchor rows, the seeded batch order, the schedule);
accelerate supplies the processes (`accelerate launch --num_processes N`, or a DeepSpeed or FSDP
config file passed to it), the device, the DDP wrapper and the gradient reduction. One process
without a launcher is plain single-process training on the CPU or the one GPU.

Why the result does not depend on the number of processes: every process builds the same global
batch order and takes every N-th row of each global batch. Each process's loss is its rows' summed
token losses divided by the reply tokens of the *global* batch, times N; DDP averages the gradients
over the N processes, so the update is the gradient of the global batch's mean token loss, as in one
process (up to the order of float sums). Dropout draws differ per process, so that holds for
dropout 0, the presets' value.
"""

from __future__ import annotations

import torch

from ..chat.tokens import IGNORE
from ..errors import AdapterMergeError


class ReplyLoss(torch.nn.Module):
    """The PEFT model with its loss as the forward, so the gradient passes through the DDP (or FSDP)
    wrapper that accelerate puts around it: the summed cross-entropy over the reply tokens."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn  # (model, batch, reduction) -> loss

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss_fn(self.model, batch, "sum")


def make_accelerator():
    """The Accelerator for this run: the launcher's settings when started by `accelerate launch`
    (or torchrun), else one process on the GPU if there is one, else the CPU. Without a GPU,
    accelerate forms a gloo group only when told to run on the CPU, so it is told."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def reply_tokens(row: tuple[list[int], list[int]]) -> int:
    """Reply tokens a row adds to the loss: labels after the first position (each predicts from the
    token before it)."""
    return sum(label != IGNORE for label in row[1][1:])


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This process's rows of a global batch: every `world`-th, from `rank`."""
    return batch[rank::world]


def check_batch(batch_size: int, world: int) -> None:
    if batch_size < world:
        raise AdapterMergeError(f"--batch-size {batch_size} is the global batch and must be at least the number of processes ({world})")


def is_fsdp(distributed_type) -> bool:
    """Whether accelerate runs FSDP. FSDP shards flat parameters of one dtype, so QLoRA under it
    stores the 4-bit weights in the compute dtype (bitsandbytes' bnb_4bit_quant_storage), as
    PEFT's FSDP-QLoRA recipe does (base.load_model(fsdp=True))."""
    return str(distributed_type).endswith("FSDP")
