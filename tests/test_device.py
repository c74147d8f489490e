"""Device and dtype selection with CUDA mocked (no GPU is lent to this project)."""

import pytest

import feat.extract.device as device
from feat.errors import InputError
from feat.extract.device import select_device, select_dtype
from helpers import mock_cuda


@pytest.fixture
def gpus(monkeypatch):
    return lambda count, bf16=True: mock_cuda(monkeypatch, count, bf16)


def test_auto_picks_the_gpu_when_there_is_one(gpus):
    gpus(2)
    assert select_device("auto") == "cuda:0"
    assert select_device("cuda:1") == "cuda:1"
    assert select_device("CPU") == "cpu"


def test_auto_falls_back_to_cpu_and_cuda_requests_fail_clearly(gpus):
    gpus(0)
    assert select_device("auto") == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        select_device("cuda")


def test_cuda_index_out_of_range_or_malformed(gpus):
    gpus(1)
    with pytest.raises(InputError, match="only 1 CUDA device"):
        select_device("cuda:3")
    with pytest.raises(InputError, match="cuda:N"):
        select_device("cuda:x")
    with pytest.raises(InputError, match="cuda:N"):
        select_device("tpu")


def test_dtype_auto_follows_the_device(gpus):
    gpus(1, bf16=True)
    assert select_dtype("auto", "cuda:0") == "bfloat16"
    gpus(1, bf16=False)
    assert select_dtype("auto", "cuda:0") == "float16"
    assert select_dtype("auto", "cpu") == "float32"
    assert select_dtype("bfloat16", "cpu") == "bfloat16"


def test_dtype_refusals_and_float16_on_cpu():
    assert select_dtype("float16", "cpu") == "float16", "how a float16 GPU cache is reproduced on a CPU"
    with pytest.raises(InputError, match="one of"):
        select_dtype("float64", "cpu")


def test_emulated_bf16_is_not_chosen_and_the_chosen_gpu_is_asked(gpus):
    """torch.cuda.is_bf16_supported() says yes on a T4 or V100 (emulated, slow) and asks about cuda:0."""
    from feat.finetune.device import select_accelerator

    gpus(2, bf16=[False, True])  # e.g. a T4 beside an A100
    assert select_dtype("auto", "cuda:0") == "float16"
    assert select_dtype("auto", "cuda:1") == "bfloat16"
    assert select_accelerator("cuda:0", "auto").amp_dtype == "float16"
    assert select_accelerator("cuda:0", "auto").loss_scaling
    assert select_accelerator("cuda:1", "auto").amp_dtype == "bfloat16"


def test_auto_takes_the_gpu_of_its_local_rank(gpus, monkeypatch):
    """torchrun / Slurm: one process per GPU, each told its LOCAL_RANK."""
    gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert select_device("auto") == "cuda:1"
    assert select_device("cuda:0") == "cuda:0", "an explicit device wins"
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(InputError, match="LOCAL_RANK=2 but only 2"):
        select_device("auto")
    gpus(0)
    assert select_device("auto") == "cpu", "torchrun on a CPU machine"


def test_cpu_selection_does_not_need_torch(monkeypatch):
    """A warm run on --device cpu must not pay torch's import time."""
    import builtins

    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name == "torch":
            raise AssertionError("torch imported for --device cpu")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    assert select_device("cpu") == "cpu"
    assert select_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(device, "gpu_driver_present", lambda: False)
    assert select_device("auto") == "cpu"  # no GPU device node: torch could not see a GPU either


def test_gpu_driver_is_found_by_its_device_nodes(monkeypatch):
    present = set()
    monkeypatch.setattr(device.os.path, "exists", lambda path: path in present)
    assert not device.gpu_driver_present()
    for node in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg"):  # NVIDIA, AMD ROCm, WSL2
        present.clear()
        present.add(node)
        assert device.gpu_driver_present(), node


def test_auto_asks_torch_when_a_driver_is_present_but_no_gpu_is_visible(gpus):
    gpus(0)  # e.g. CUDA_VISIBLE_DEVICES="" on a GPU node
    assert select_device("auto") == "cpu"
