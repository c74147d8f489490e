"""Where fine-tuning runs and in which precision, decided in one place so it can be tested with CUDA mocked.

The training code is the same on every device: autocast and the loss scaler are switched off (not skipped)
on CPU, pinned memory is asked for only where it helps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from feat.errors import InputError
from feat.finetune.config import AMP


@dataclass(frozen=True)
class Accelerator:
    device: str  # cpu | cuda:N
    amp_dtype: str | None  # bfloat16 | float16 under autocast; None = float32 throughout
    loss_scaling: bool  # float16 gradients underflow without a GradScaler; bfloat16 has float32's range
    pin_memory: bool  # page-locked host batches: faster, asynchronous copies to a GPU

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def eval_batch(self, train_batch: int) -> int:
        """Rows per evaluation (and parity) forward pass: the training batch on a GPU, where --batch-size was
        chosen to fit its memory; at least 32 on a CPU, where memory is not the limit and larger batches cost
        less per row."""
        return train_batch if self.device_type == "cuda" else max(train_batch, 32)

    def autocast(self):
        """Mixed precision for the encoders' forward passes (a no-op context in float32)."""
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=getattr(torch, self.amp_dtype))

    def grad_scaler(self, float16_weights: bool = False):
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.loss_scaling or float16_weights)


def select_accelerator(device: str = "auto", amp: str = "auto") -> Accelerator:
    """auto: bf16 autocast on GPUs that support it, fp16 with loss scaling on older GPUs, float32 on CPU
    (CPU autocast is rarely faster, and float32 keeps step 0 equal to the cached features)."""
    from feat.extract.device import native_bf16, select_device

    if amp not in AMP:
        raise InputError(f"--amp must be one of {', '.join(AMP)}, not '{amp}'")
    chosen = select_device(device)
    cuda = chosen.startswith("cuda")
    if amp == "auto":
        dtype = ("bfloat16" if native_bf16(chosen) else "float16") if cuda else None
    elif amp == "off":
        dtype = None
    elif amp == "fp16" and not cuda:
        raise InputError("--amp fp16 needs a CUDA device (CPU autocast supports bf16 only)")
    else:
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[amp]
    return Accelerator(chosen, dtype, loss_scaling=dtype == "float16", pin_memory=cuda)
