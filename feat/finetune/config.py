"""How `feat finetune` trains: the reference's end-to-end protocol by default (REFERENCE.md section 1).

Stored verbatim in the output's config.json and in its checkpoint: `--resume` refuses a checkpoint made with
another config, because the schedule, the batches and the frozen parts would not continue the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

FREEZE = ("none", "text", "vision", "joint")
AMP = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 15  # upper bound (the reference's); early stopping on dev usually ends sooner
    batch_size: int = 16  # rows per forward pass (the reference's end-to-end batch)
    grad_accum: int = 1  # batches per optimizer step: the effective batch is batch_size * grad_accum
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit); the schedule ends there too
    lr_encoder: float = 2e-5  # the reference's end-to-end rate: pretrained weights move only a little
    lr_head: float = 1e-3  # the head's own rate (a head on features trains at ~1e-3, the reference notes)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay, as the reference
    warmup: float = 0.1  # fraction of all optimizer steps with a linear warm-up, then linear decay to 0
    clip: float = 1.0  # max global grad norm over every trainable parameter
    patience: int = 5  # epochs without a dev improvement before stopping
    freeze: str = "none"  # none | text | vision | joint: those encoders stay as cached (read from the cache)
    unfreeze_last: int = -1  # train only the last N blocks of each encoder's layer stack and what follows; -1 = all
    seed: int = 0  # seeds dropout and the batch order; a resumed run continues the same random streams
    amp: str = "auto"  # auto (bf16 on GPUs with it, else fp16 + loss scaling; float32 on CPU) | off | bf16 | fp16
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0 = at the end of each epoch only)
    parity_tolerance: float = 1e-3  # max |probability difference| to the run's dev predictions before any step
