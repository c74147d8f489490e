"""The GPU path, proven on the CPU where the behaviour exists there (issue 19): bfloat16 caches in stage 3
(CPU bfloat16 is real arithmetic), master weights, RNG state, memory, TF32 switches; device queries mocked.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import cli, mock_cuda
from stage3 import QUICK, SMALL_FUSE, build_run, one_thread  # noqa: F401 (autouse fixture)


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_model, one_thread):
    """A run on a bfloat16 DeBERTa cache beside a float32 BLIP cache (the GPU default beside a CPU one)."""
    return build_run(tmp_path_factory.mktemp("mixed"), tiny_model, encoders=("deberta", "blip"),
                     extract_options={"deberta": ["--dtype", "bfloat16"]})


# ----- stage 3 from a low-precision cache ----------------------------------------------------------------------
def test_a_bfloat16_cache_passes_parity_and_trains_float32_master_weights(mixed, tmp_path):
    out = tmp_path / "ft"
    cli("finetune", mixed.run, "--data", mixed.data, "--out", out, "--epochs", "1", "--max-steps", "2", *QUICK)
    parity = read(out / "metrics.json")["parity"]
    assert parity["max_probability_difference"] <= 1e-6
    assert parity["tolerance"] == 2**-7, "bfloat16's rounding step: its batches are padded otherwise than extraction's"
    assert parity["inputs"]["deberta"]["max_abs_difference"] == 0.0, "the bf16 network is the extraction's"
    assert parity["inputs"]["blip"]["relative"] < 1e-5
    assert read(out / "config.json")["precision"] == {"deberta": "bfloat16 weights, float32 master copy",
                                                      "blip": "float32"}
    # The fine-tuned run is predicted in the arithmetic it was trained in: its own test predictions again.
    preds = tmp_path / "preds.csv"
    cli("predict", out, mixed.data, "--out", preds, "--device", "cpu")
    mine = pd.read_csv(preds, dtype={"id": str}).set_index("id")
    saved = pd.read_csv(out / "predictions_test.csv", dtype={"id": str}).set_index("id")
    columns = [c for c in saved.columns if c.startswith("p_")]
    np.testing.assert_allclose(mine.loc[saved.index, columns].to_numpy(), saved[columns].to_numpy(), atol=1e-6)


def test_master_weights_keep_updates_below_bfloat16_resolution():
    """A step of 1e-4 on a weight of 1.0 is below bfloat16's resolution (2**-7): without a float32 master
    copy it is rounded away, with one it accumulates and reaches the network once it is large enough."""
    from feat.finetune.model import FinetuneModel

    model = FinetuneModel.__new__(FinetuneModel)
    torch.nn.Module.__init__(model)
    model.encoders = torch.nn.ModuleList([torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)])
    model.head = torch.nn.Linear(1, 1)
    model.masters, model._low = {}, []
    with torch.no_grad():
        model.encoders[0].weight.fill_(1.0)
    encoder_params, _ = model.encoder_groups()
    assert encoder_params[0].dtype == torch.float32
    optimizer = torch.optim.SGD(encoder_params, lr=1e-4)
    for _ in range(100):
        model.encoders[0](torch.ones(1, 1, dtype=torch.bfloat16)).sum().neg().backward()  # gradient -1
        model.collect_master_grads()
        optimizer.step()
        optimizer.zero_grad()
        model.copy_masters()
    assert abs(model.masters["encoders.0.weight"].item() - 1.01) < 1e-5
    assert model.encoders[0].weight.item() == pytest.approx(1.0078125), "1.01 rounded to bfloat16"
    assert model.trainable_state()["encoders.0.weight"].dtype == torch.float32, "checkpoints hold the masters"


def test_a_float16_cache_is_predicted_and_fine_tuned_on_a_cpu(tmp_path, tiny_model):
    """A GPU's float16 cache: `feat predict` on a CPU computes float16 as the cache did (it refused before),
    and `feat finetune` starts from it with loss scaling over its float16 weights."""
    tiny = build_run(tmp_path, tiny_model, encoders=("deberta",), strategy="single",
                     extract_options={"deberta": ["--dtype", "float16"]})
    preds = tmp_path / "preds.csv"
    cli("predict", tiny.run, tiny.data, "--out", preds, "--device", "cpu")
    mine = pd.read_csv(preds, dtype={"id": str}).set_index("id")
    saved = pd.read_csv(tiny.run / "predictions_dev.csv", dtype={"id": str}).set_index("id")
    columns = [c for c in saved.columns if c.startswith("p_")]
    np.testing.assert_allclose(mine.loc[saved.index, columns].to_numpy(), saved[columns].to_numpy(), atol=1e-6)
    out = tmp_path / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--max-steps", "1", *QUICK)
    assert read(out / "metrics.json")["parity"]["inputs"]["deberta"]["max_abs_difference"] == 0.0
    assert read(out / "config.json")["precision"] == {"deberta": "float16 weights, float32 master copy"}


# ----- memory: gradient checkpointing with --unfreeze-last -----------------------------------------------------
def saved_activation_bytes(module, inputs) -> int:
    """Bytes autograd keeps from a forward pass for the backward one (what training memory is made of)."""
    total = 0

    def pack(tensor):
        nonlocal total
        if not isinstance(tensor, torch.nn.Parameter):
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(inputs).pow(2).sum().backward()
    return total


def test_grad_checkpointing_with_unfreeze_last_keeps_less_not_more(tiny_model, small_synthetic_csv):
    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.registry import create_encoder
    from feat.finetune.model import enable_grad_checkpointing, train_last_blocks

    texts = pd.read_csv(small_synthetic_csv, keep_default_na=False)["text"].tolist()[:8]
    saved = []
    for checkpointed in (False, True):
        encoder = create_encoder("deberta", EncoderOptions(model=str(tiny_model("deberta"))))
        encoder.load(Runtime())
        module = encoder.trainable_module()
        inputs = module.collate(texts)
        train_last_blocks(module, 1, lambda: module(inputs))
        module.train()
        for m in module.modules():  # as FinetuneModel.train(): fully frozen parts stay in eval mode
            if list(m.parameters()) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        if checkpointed:
            enable_grad_checkpointing(module)
        saved.append(saved_activation_bytes(module, inputs))
    # Measured: 906 KB without checkpointing, 75 KB with it; 779 KB when the embedding output required grad
    # (the frozen block, in eval mode and not checkpointed, then kept its activations).
    assert saved[1] < saved[0] / 4, f"checkpointing kept {saved[1]} bytes, without it {saved[0]}"


# ----- RNG: ViLT's fixed patch order, checkpoints with fewer GPUs ----------------------------------------------
def test_vilt_seeds_only_its_own_generator_and_restores_it(tiny_model, small_synthetic_csv, monkeypatch):
    """A ViLT forward pass must leave every random stream as it found it: during fine-tuning, a reseeded
    generator would replay seed 0's dropout masks at every step."""
    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.images import decode_image
    from feat.extract.registry import create_encoder

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    encoder = create_encoder("vilt", EncoderOptions(model=str(tiny_model("vilt"))))
    encoder.load(Runtime())
    frame = pd.read_csv(small_synthetic_csv, keep_default_na=False).iloc[:2]
    transform = encoder.transform()
    pixels = torch.stack([transform(decode_image(str(small_synthetic_csv.parent / p))[0]) for p in frame["image"]])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reseeded.clear()
    first = encoder.encode_pairs(frame["text"].tolist(), pixels)
    assert torch.equal(torch.rand(3), expected), "the CPU stream continues where it was"
    assert reseeded == [], "no GPU generator is reseeded"
    np.testing.assert_array_equal(encoder.encode_pairs(frame["text"].tolist(), pixels), first)


def mock_generators(monkeypatch, count: int) -> dict[int, torch.Tensor]:
    """`count` CUDA generators whose states are plain tensors; touching a missing device raises IndexError, as
    torch does."""
    states = {i: torch.full((4,), i, dtype=torch.uint8) for i in range(count)}

    def index(device) -> int:
        i = device if isinstance(device, int) else int(str(device).partition(":")[2] or 0)
        if i >= count:
            raise IndexError(f"device {i} of {count}")
        return i

    mock_cuda(monkeypatch, count)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[index(device)].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": states.__setitem__(index(device), state))
    return states


def test_a_checkpoint_restores_its_gpu_generator_onto_the_gpu_it_resumes_on(monkeypatch):
    from feat.finetune import checkpoint as ckpt

    mock_generators(monkeypatch, 2)
    saved = ckpt.rng_state("cuda:1")  # trained on the second GPU
    assert torch.equal(saved["cuda"], torch.full((4,), 1, dtype=torch.uint8))
    states = mock_generators(monkeypatch, 1)  # resumed where one GPU is visible
    ckpt.set_rng_state(saved, "cuda:0")
    assert torch.equal(states[0], saved["cuda"]), "cuda:1's stream continues on cuda:0"
    ckpt.set_rng_state(saved, "cpu")  # resumed on a CPU: the CPU stream only
    assert torch.equal(torch.get_rng_state(), saved["cpu"])


# ----- host-device traffic -------------------------------------------------------------------------------------
class RecordedTensor(torch.Tensor):
    """A tensor that records its `.to(...)` calls."""

    calls: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.calls.append((args[1:], dict(kwargs or {})))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("name", ["effnet", "vilt"])
def test_pixels_are_copied_asynchronously_then_converted_on_the_device(name, tiny_model):
    """From a pinned batch, `.to(device, non_blocking=True)` copies asynchronously; converting first (as
    `.to(device, dtype)` does) makes an unpinned CPU copy, whose transfer blocks."""
    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.registry import create_encoder

    options = EncoderOptions(model=str(tiny_model(name))) if name == "vilt" else EncoderOptions()
    encoder = create_encoder(name, options)
    if name == "vilt":
        encoder.load(Runtime())
    encoder.runtime = Runtime(device="cpu", dtype="bfloat16")
    pixels = torch.rand(2, 4, 8, 8).as_subclass(RecordedTensor)
    RecordedTensor.calls = []
    inputs = encoder.collate(["a", "b"] if name == "vilt" else None, pixels)
    moved = inputs["pixels"] if name == "vilt" else inputs["pixel_values"]
    assert moved.dtype == torch.bfloat16
    args, kwargs = RecordedTensor.calls[0]
    assert args == ("cpu",) and kwargs == {"non_blocking": True}, "the first move is the asynchronous copy"


class HostSyncs(torch.overrides.TorchFunctionMode):
    """Counts the tensor-to-host reads (each waits for a GPU) made by the lines of the given files."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.numpy, torch.Tensor.cpu,
             torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.nonzero}

    def __init__(self, files: tuple[str, ...]):
        super().__init__()
        self.files, self.where = files, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        import sys

        if func in self.READS:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.endswith(self.files):
                self.where.append(f"{caller.f_code.co_filename.split('/')[-1]}:{caller.f_lineno} "
                                  f"{caller.f_code.co_name} {func.__name__}")
        return func(*args, **(kwargs or {}))


def test_training_steps_do_not_wait_for_the_device(mixed, monkeypatch):
    """No read of a tensor by the host in a training step (forward, loss, backward, optimizer step): each
    would stall a GPU's queue. Reads at the end of an epoch (the loss to report, evaluation) are fine."""
    from feat.finetune import train

    counted = HostSyncs(("finetune/train.py", "finetune/model.py"))
    real_evaluate = train.evaluate

    def evaluate_uncounted(*args, **kwargs):
        counted.__exit__(None, None, None)
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            counted.__enter__()

    monkeypatch.setattr(train, "evaluate", evaluate_uncounted)
    original_fit = train.fit

    def fit_counted(*args, **kwargs):
        with counted:
            return original_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit_counted)
    from feat.finetune.run import FinetuneSpec, run_finetune
    from feat.finetune.config import FinetuneConfig

    out = mixed.root / "syncs"
    run_finetune(FinetuneSpec(mixed.run, mixed.data, out, FinetuneConfig(epochs=1, max_steps=3, batch_size=8),
                              device="cpu", curve=False))
    per_step = [w for w in counted.where if "sync_loss" not in w]
    assert counted.where and per_step == [], per_step


# ----- TF32: float32 means float32 -----------------------------------------------------------------------------
def test_float32_extraction_and_parity_run_without_tf32(tmp_path, monkeypatch):
    """cuDNN convolutions use TF32 by default on Ampere and later; `set_float32_matmul_precision` does not
    cover them. A float32 cache and the parity check must compute in float32 (the flags exist on CPU builds)."""
    import contextlib

    from feat.extract.runner import ExtractConfig, extract
    from feat.finetune.parity import as_cached
    from helpers import ProbeTextEncoder, register_test_encoders, text_table

    register_test_encoders(monkeypatch)
    seen = []
    encode = ProbeTextEncoder.encode_texts
    monkeypatch.setattr(ProbeTextEncoder, "encode_texts", lambda self, texts: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())) or encode(self, texts))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    extract(ExtractConfig(data=text_table(tmp_path / "d.csv", 9), cache=tmp_path / "c", encoders=["probe-text"],
                          batch_size=4, dtype="float32", device="cpu"))
    assert seen and set(seen) == {(False, "highest")}
    assert torch.backends.cudnn.allow_tf32, "restored afterwards"

    model = type("Model", (), {"autocast": contextlib.nullcontext})()
    with as_cached(model, "highest"):
        assert not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.allow_tf32


# ----- Ray: placement on GPUs (no Ray needed for these parts) --------------------------------------------------
def first_fit(actors: int, per_actor: float, gpus: int) -> bool:
    """Whether Ray can place `actors` each asking `per_actor` of a GPU on `gpus` GPUs (each actor on one GPU)."""
    free = [1.0] * gpus
    for _ in range(actors):
        slot = next((i for i, f in enumerate(free) if f + 1e-9 >= per_actor), None)
        if slot is None:
            return False
        free[slot] -= per_actor
    return True


@pytest.mark.parametrize("actors,gpus", [(3, 2), (2, 2), (5, 2), (1, 4), (4, 3)])
def test_ray_gpu_actors_can_all_be_placed(actors, gpus):
    from feat.extract.ray_backend import RayBackend
    from feat.extract.runner import ExtractConfig

    backend = RayBackend.__new__(RayBackend)
    backend.config, backend.cpus, backend.gpus = ExtractConfig(data=".", cache=".", encoders=["x"],
                                                                ray_actors=actors), 16, gpus
    count, cpus, per_actor = backend._actor_shape(decoding=False)
    assert count == actors and first_fit(actors, per_actor, gpus)


def test_ray_gpu_actors_limit_torch_threads_and_compute_float32_without_tf32(monkeypatch):
    from feat.extract.base import Runtime
    from feat.extract.ray_backend import _Actor

    runtime = Runtime(device="cuda:0", dtype="float32")
    encoder = type("Loaded", (), {"runtime": runtime, "model": object()})()  # loaded already: nothing to load
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    try:
        _Actor(encoder, runtime, threads=1, known_dim=None)
        assert torch.get_num_threads() == 1, "a GPU actor uses its 1 CPU, not every core of the node"
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision("highest")


def test_ray_driver_resolves_a_hub_model_on_its_cpu_and_cuda_indices_are_refused(tmp_path):
    from feat.extract.base import Runtime
    from feat.extract.runner import ExtractConfig, _check_config, _fingerprint
    from feat.errors import InputError

    loads = []

    class Unresolved:
        def fingerprint(self, runtime, store_dtype):
            return {"weights": "hub:model@unresolved" if not loads else "hub:model@abc"}

        def load(self, runtime):
            loads.append(runtime)

    config = ExtractConfig(data=tmp_path, cache=tmp_path, encoders=["x"], backend="ray")
    _fingerprint(Unresolved(), Runtime(device="cuda:0", dtype="bfloat16"), config)
    assert loads == [Runtime(device="cpu", dtype="bfloat16")], "the driver may have no GPU; actors load their own"
    with pytest.raises(InputError, match="Ray places actors on GPUs"):
        _check_config(ExtractConfig(data=tmp_path, cache=tmp_path, encoders=["x"], backend="ray", device="cuda:1"))


# ----- out of memory: the batch is halved and retried; encoders are released between encoders -----------------
def out_of_memory_above(monkeypatch, cls, method: str, rows: int) -> None:
    """`cls.method` raises CUDA's out-of-memory error for batches of more than `rows` rows."""
    real = getattr(cls, method)

    def limited(self, *args):
        if len(args[0]) > rows:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: {len(args[0])} rows)")
        return real(self, *args)

    monkeypatch.setattr(cls, method, limited)


def read_vectors(cache, name):
    from feat.cache import FeatureCache

    rows = FeatureCache(cache).read(name).rows
    return dict(zip(rows.ids, rows.matrix))


def test_out_of_memory_halves_the_batch_and_reports_the_size_that_fitted(tmp_path, monkeypatch, synthetic_csv):
    from feat.extract.runner import ExtractConfig, extract
    from helpers import ProbeJointEncoder, ProbeTextEncoder, register_test_encoders, text_table

    register_test_encoders(monkeypatch)
    texts = text_table(tmp_path / "d.csv", 20)
    extract(ExtractConfig(data=texts, cache=tmp_path / "ref", encoders=["probe-text"], batch_size=8))
    extract(ExtractConfig(data=synthetic_csv, cache=tmp_path / "ref", encoders=["probe-joint"], batch_size=8))
    out_of_memory_above(monkeypatch, ProbeTextEncoder, "encode_texts", 3)
    out_of_memory_above(monkeypatch, ProbeJointEncoder, "encode_pairs", 5)
    report = extract(ExtractConfig(data=texts, cache=tmp_path / "c", encoders=["probe-text"], batch_size=8))
    assert any("out of GPU memory with batches of 4 rows; continued with 2" in n for n in report.notes), report.notes
    joint = extract(ExtractConfig(data=synthetic_csv, cache=tmp_path / "c", encoders=["probe-joint"], batch_size=8))
    assert any("continued with 4" in n for n in joint.notes), joint.notes
    for name in ("probe-text", "probe-joint"):
        reference, mine = read_vectors(tmp_path / "ref", name), read_vectors(tmp_path / "c", name)
        assert mine.keys() == reference.keys()
        for item in reference:  # probe-text's last two columns describe its batch (padding, members)
            np.testing.assert_array_equal(mine[item][:6 if name == "probe-text" else None],
                                          reference[item][:6 if name == "probe-text" else None])
    out_of_memory_above(monkeypatch, ProbeTextEncoder, "encode_texts", 0)
    result = cli("extract", texts, "--encoder", "probe-text", "--cache", tmp_path / "c2", expect=1)
    assert "out of GPU memory with a batch of one row" in " ".join(result.output.split())


def test_each_encoder_is_released_before_the_next_one_loads(tmp_path, monkeypatch, synthetic_csv):
    import weakref

    from feat.extract.runner import ExtractConfig, extract
    from helpers import ProbeJointEncoder, ProbeTextEncoder, register_test_encoders

    register_test_encoders(monkeypatch)
    networks = []

    class Network:
        pass

    def load(self, runtime):
        assert all(ref() is None for ref in networks), "an earlier encoder's network is still held"
        self.runtime, self.model = runtime, Network()
        networks.append(weakref.ref(self.model))

    monkeypatch.setattr(ProbeTextEncoder, "load", load)
    monkeypatch.setattr(ProbeJointEncoder, "load", load)
    extract(ExtractConfig(data=synthetic_csv, cache=tmp_path / "c", encoders=["probe-text", "probe-joint"]))
    assert len(networks) == 2


# ----- several processes: torchrun over gloo on the CPU ---------------------------------------------------------
@pytest.mark.slow  # ~70 s here (two processes each import torch and transformers): run with -m slow
def test_torchrun_with_two_processes_trains_as_one_process_does(tmp_path, tiny_model):
    """`torchrun --nproc_per_node 2 -m feat finetune` (gloo, CPU): the same weights and predictions as one process
    up to float rounding. Batches of 7 on 36 train rows: shares of 4 + 3, and a last batch of one row that
    leaves the second process without rows. Dropout off (encoder and head): its masks depend on which process
    draws them, so with dropout two processes match one statistically, not numerically."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    model = tmp_path / "deberta-no-dropout"
    shutil.copytree(tiny_model("deberta"), model)
    config = read(model / "config.json")
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_dropout=0.0)
    (model / "config.json").write_text(json.dumps(config))
    tiny = build_run(tmp_path, lambda name: model, encoders=("deberta",), strategy="single")
    run = tmp_path / "run-no-dropout"
    cli("fuse", "--cache", tiny.cache, "--features", "deberta", "--strategy", "single", "--label", "label", "--out",
        run, *SMALL_FUSE, "--dropout", "0")
    common = ["--epochs", "2", "--batch-size", "7", "--lr-encoder", "1e-3", "--lr-head", "3e-3", "--device", "cpu",
              "--no-curve"]
    cli("finetune", run, "--data", tiny.data, "--out", tmp_path / "one", *common)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "feat", "finetune", str(run), "--data", str(tiny.data), "--out",
                           str(tmp_path / "two"), *common], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    head = {k: v for k, v in load_file(str(run / "model.safetensors")).items() if not k.startswith("__stats__")}
    assert max(float((one[f"head.{k}"] - v).abs().max()) for k, v in head.items()) > 1e-3, "training moved the head"
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
    for split in ("dev", "test"):
        a, b = (pd.read_csv(tmp_path / run / f"predictions_{split}.csv") for run in ("one", "two"))
        columns = [c for c in a.columns if c.startswith("p_")]
        np.testing.assert_allclose(b[columns].to_numpy(), a[columns].to_numpy(), atol=1e-5)
    history = [pd.read_csv(tmp_path / run / "history.csv") for run in ("one", "two")]
    np.testing.assert_allclose(history[1]["train_loss"].iloc[1:], history[0]["train_loss"].iloc[1:], rtol=1e-5)
    assert read(tmp_path / "two" / "metrics.json")["steps"] == read(tmp_path / "one" / "metrics.json")["steps"]


def test_python_dash_m_feat_is_the_feat_command():
    """What `torchrun ... -m feat finetune ...` runs in each process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "feat", "finetune", "--help"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Usage: feat finetune" in " ".join(done.stdout.split()), done.stderr[-2000:]


def test_every_process_resumes_its_own_random_stream():
    from feat.finetune import checkpoint as ckpt
    from feat.finetune.distributed import World

    states = [{"cpu": torch.full((3,), r, dtype=torch.uint8)} for r in range(3)]
    merged = ckpt.merge_rank_rng(states)
    for rank in range(3):
        assert torch.equal(ckpt.rank_rng(merged, rank)["cpu"], states[rank]["cpu"])
    assert torch.equal(ckpt.rank_rng(merged, 5)["cpu"], states[0]["cpu"]), "more processes than saved: the first's"
    shares = [World(rank, 2).share(np.arange(7)) for rank in range(2)]
    assert [s.tolist() for s in shares] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(World(rank, 2).share(np.arange(1))) for rank in range(2)] == [1, 0]
