"""Device and dtype selection, kept apart from torch calls elsewhere so it can be tested with CUDA mocked."""

from __future__ import annotations

import contextlib
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
    """auto -> the GPU of this process when one is visible (cuda:LOCAL_RANK under torchrun, else cuda:0), else
    cpu. An explicit cuda request without a GPU is an error."""
    spec = spec.strip().lower()
    if spec == "cpu" or (spec == "auto" and not gpu_driver_present()):
        return "cpu"  # without importing torch: a warm-cache run on the CPU then never loads it
    import torch

    if spec == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{_local_rank(torch.cuda.device_count())}"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA device is visible on this machine")
        index_text = spec.partition(":")[2] or str(_local_rank(torch.cuda.device_count()))
        if not index_text.isdigit():
            raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got '{spec}')")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return f"cuda:{index}"
    raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got '{spec}')")


def _local_rank(visible: int) -> int:
    """torchrun (and Slurm launchers that mimic it) start one process per GPU and tell each its LOCAL_RANK:
    each takes its own GPU instead of all landing on cuda:0."""
    text = os.environ.get("LOCAL_RANK", "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise InputError(f"LOCAL_RANK={text!r} is not a GPU index")
    if int(text) >= visible:
        raise InputError(f"LOCAL_RANK={text} but only {visible} CUDA device(s) visible: start at most one "
                         "process per GPU, or give --device")
    return int(text)


def select_dtype(spec: str, device: str) -> str:
    """auto -> bfloat16 on GPUs that compute it natively, float16 on older GPUs, float32 on CPU (exact, and CPU
    half precision is rarely faster). float16 on a CPU is allowed: slow, but it is how a float16 cache made on
    a GPU is reproduced there (`feat predict`, `feat finetune`)."""
    if spec not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)} (got '{spec}')")
    if spec != "auto":
        return spec
    if device.startswith("cuda"):
        return "bfloat16" if native_bf16(device) else "float16"
    return "float32"


def native_bf16(device: str) -> bool:
    """Whether `device` (cuda:N) computes bfloat16 in hardware: compute capability 8.0 (Ampere) and later, or
    ROCm. `torch.cuda.is_bf16_supported()` also counts emulated bfloat16 (V100, T4: several times slower than
    their float16) and asks about the current device, not the one chosen."""
    import torch

    if torch.version.hip:
        return True
    index = int(device.partition(":")[2] or 0)
    return torch.cuda.get_device_capability(index)[0] >= 8


@contextlib.contextmanager
def torch_settings(threads: int, dtype: str):
    """Forward passes with `threads` torch threads (0: leave torch's default) and, for a float32 compute
    dtype, float32 indeed: no TF32 in matmuls nor in cuDNN convolutions, which use it by default on Ampere
    and later GPUs (10 mantissa bits) and which `set_float32_matmul_precision` does not cover. Settings are
    restored afterwards."""
    import torch

    threads_before, matmul_before = torch.get_num_threads(), torch.get_float32_matmul_precision()
    cudnn_before = torch.backends.cudnn.allow_tf32
    if threads:
        torch.set_num_threads(threads)
    if dtype == "float32":
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(threads_before)
        torch.set_float32_matmul_precision(matmul_before)
        torch.backends.cudnn.allow_tf32 = cudnn_before


def to_device(tensor, device: str, dtype: str):
    """Copy, then convert on the device: from a pinned batch the copy is asynchronous, and the conversion runs
    on the GPU. `tensor.to(device, dtype)` converts on the CPU first, into an unpinned tensor whose copy then
    blocks the host (pinning the batch bought nothing)."""
    return tensor.to(device, non_blocking=True).to(torch_dtype(dtype))


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
