"""Device and dtype selection, kept apart from torch calls elsewhere so it can be tested with CUDA mocked."""

from __future__ import annotations

import os

from feat.errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")

# Device nodes without which torch cannot see a GPU through torch.cuda: NVIDIA (desktop, server, Jetson),
# AMD ROCm (torch reports it as cuda too) and WSL2. When none exists, `auto` is cpu without importing torch,
# whose ~1-2 s import would otherwise be most of a warm-cache run.
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/nvhost-ctrl", "/dev/nvmap",
             "/dev/kfd", "/dev/dxg")


def gpu_driver_present() -> bool:
    return any(os.path.exists(node) for node in GPU_NODES)


def select_device(spec: str = "auto") -> str:
    """auto -> cuda:0 when a GPU is visible, else cpu. An explicit cuda request without a GPU is an error."""
    spec = spec.strip().lower()
    if spec == "cpu" or (spec == "auto" and not gpu_driver_present()):
        return "cpu"  # without importing torch: a warm-cache run on the CPU then never loads it
    import torch

    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA device is visible on this machine")
        index_text = spec.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got '{spec}')")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return f"cuda:{index}"
    raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got '{spec}')")


def select_dtype(spec: str, device: str) -> str:
    """auto -> bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU (exact, and CPU
    half precision is rarely faster)."""
    if spec not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)} (got '{spec}')")
    if spec != "auto":
        if spec == "float16" and device == "cpu":
            raise InputError("--dtype float16 is not supported on CPU; use bfloat16 or float32")
        return spec
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
