"""`feat extract --backend ray`: the forward passes as a Ray Data pipeline (install `feat[ray]`).

The runner plans (fingerprints, reuse, which rows to encode) and writes the cache (parts, then finalize)
exactly as with the local backend; only the encoded batches come from here, streamed back to the driver as
they finish. Same encoders, same preprocessing, same fingerprints: a Ray-built cache and a local one are
interchangeable, and either resumes the other.

- Texts: batched in the driver exactly as locally (sorted by token length, whole batches), one dataset row
  per batch, so every vector comes from the same batch members and padding as a local run: bit-identical.
- Images (and joint text+image rows): decoded and transformed by `load_pixels` as a `map` over CPU tasks,
  then batched by Ray for the encoder actors; batch members differ from a local run (float noise only).
- Encoders: `map_batches` over a pool of actors (a callable class), one model load per actor; one actor
  per GPU when the cluster has GPUs, else actors sized from its CPUs.
- Fitted encoders (TF-IDF: one sparse transform, no network) run in the driver, as locally.
"""

from __future__ import annotations

import copy
import logging
from typing import Iterator

import numpy as np

from feat.errors import FeatError, InputError
from feat.extract.base import Encoder, FittedEncoder, ImageEncoder, JointEncoder, Runtime, TextEncoder
from feat.extract.runner import (EncodedBatch, EncodeJob, ExtractConfig, _ensure_loaded, encode_images,
                                 fitted_batches, probe_dim, text_batches)

MAX_THREADS_PER_ACTOR = 4  # CPU actors: torch's intra-op threads scale poorly past ~4, more actors do better


class RayBackend:
    def __init__(self, config: ExtractConfig):
        try:
            import ray
            import ray.data  # noqa: F401 - the extra may install ray without its data library
        except ImportError:
            raise InputError("--backend ray needs Ray Data: pip install 'feat[ray]'") from None
        self.config = config
        self.started = not ray.is_initialized()  # a caller's own ray.init (a test, a notebook) is kept
        if self.started:
            try:
                ray.init(address=config.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {config.ray_address}" if config.ray_address else "a local Ray instance"
                raise FeatError(f"cannot start or reach {where}: {str(exc).splitlines()[0][:200]}") from None
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # feat's own progress bar counts the rows
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        resources = ray.cluster_resources()
        self.cpus = max(1, int(resources.get("CPU", 1)))
        self.gpus = int(resources.get("GPU", 0)) if config.device != "cpu" else 0

    def runtime(self) -> Runtime:
        """On the actors' device: a GPU when the cluster has one, with the dtype the local rule picks there."""
        import ray

        from feat.extract.device import select_dtype

        if self.gpus:
            dtype = ray.get(ray.remote(num_gpus=1)(_gpu_dtype).remote(self.config.dtype))
            return Runtime(device="cuda:0", dtype=dtype)  # Ray shows each actor only its own GPU, as cuda:0
        if self.config.device.startswith("cuda"):
            raise InputError(f"--device {self.config.device} with --backend ray: the Ray cluster has no GPU")
        return Runtime(device="cpu", dtype=select_dtype(self.config.dtype, "cpu"))

    def batches(self, job: EncodeJob) -> Iterator[EncodedBatch]:
        encoder = job.encoder
        if isinstance(encoder, FittedEncoder):
            yield from fitted_batches(job)
            return
        images = isinstance(encoder, (ImageEncoder, JointEncoder))
        if not images and not isinstance(encoder, TextEncoder):
            raise FeatError(f"encoder '{encoder.name}' is of no known kind")
        dataset = self._image_dataset(job) if images else self._text_dataset(job)
        yield from _results(dataset)
        actors, cpus, gpus = self._actor_shape(decoding=images)
        job.report.notes.append(f"{job.name}: ray stages {' -> '.join(_stages(dataset))}; {actors} encoder "
                                f"actor(s) x {cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else ""))

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()

    def _text_dataset(self, job: EncodeJob):
        import ray.data

        job.encoder.load_tokenizer()
        items = [{"rows": np.asarray(rows, dtype=np.int64), "texts": [job.texts[r] for r in rows]}
                 for rows in text_batches(job)]
        # batch_size=1: each call is one of the driver's batches, never a re-cut of them.
        return ray.data.from_items(items).map_batches(_TextActor, batch_size=1, batch_format="numpy",
                                                      **self._actor_args(job, decoding=False))

    def _image_dataset(self, job: EncodeJob):
        import ray.data

        joint = isinstance(job.encoder, JointEncoder)
        items = [{"row": r, "path": job.paths[r], "error": job.errors[r], "text": (job.texts[r] or "") if joint else ""}
                 for r in job.todo]
        size = job.config.batch_size
        transform = job.encoder.transform()
        shape = tuple(_blank_pixels(transform).shape)
        # One decoding task per batch of rows: a task per row costs more in scheduling than it decodes.
        rows = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // size)))
        decoded = rows.map(_decode_row, fn_kwargs={"transform": transform, "shape": shape}, num_cpus=1)
        # Blocks of one batch each, and a stage boundary: without it Ray Data fuses a task map into the actor
        # stage after it, which would decode inside the encoder actors (in turn with the forward pass, on the
        # actors' CPUs) instead of in CPU tasks beside them.
        batches = decoded.repartition(target_num_rows_per_block=size)
        return batches.map_batches(_ImageActor, batch_size=size, batch_format="numpy",
                                   **self._actor_args(job, decoding=True))

    def _actor_args(self, job: EncodeJob, decoding: bool) -> dict:
        import ray.data

        actors, cpus, gpus = self._actor_shape(decoding)
        return dict(compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None,
                    fn_constructor_kwargs={"encoder": _unloaded(job.encoder), "runtime": job.runtime,
                                           "threads": max(1, int(cpus)), "known_dim": job.known_dim})

    def _actor_shape(self, decoding: bool) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor)."""
        wanted = self.config.ray_actors
        if self.gpus:
            actors = wanted or self.gpus
            # More actors than GPUs share them, as whole fractions: 3 actors of 2/3 GPU each fit on no 2 GPUs
            # (each GPU has 1/3 left beside one of them); of 1/2 each, two share a GPU and one has its own.
            return actors, 1, 1 / -(-actors // self.gpus)
        free = max(1, self.cpus - 1) if decoding else self.cpus  # one CPU left for the decoding tasks
        if wanted:
            return wanted, free / wanted, 0
        threads = min(MAX_THREADS_PER_ACTOR, free)
        return max(1, free // threads), threads, 0


def _results(dataset) -> Iterator[EncodedBatch]:
    """The actors' output blocks as they finish (in any order: finalize aligns rows by id)."""
    from ray.exceptions import RayError

    try:
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            yield EncodedBatch([int(r) for r in out["row"]], np.asarray(out["vector"], dtype=np.float32),
                               [str(r) for r in out["reason"]], forwards=int(out["forward"].sum()))
    except RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, FeatError):
            raise cause from None
        raise FeatError(f"the ray backend failed: {str(cause).strip().splitlines()[-1][:300]}") from None


def _stages(dataset) -> list[str]:
    """The operators Ray Data ran, from its execution stats ("Operator 2 Map(_decode_row): ..." lines): fused
    stages show as one name joined by "->"."""
    lines = [line.split(" ", 2)[2] for line in dataset.stats().splitlines() if line.startswith("Operator ")]
    return [line.split(":")[0].split("[")[0] for line in lines]


def _unloaded(encoder: Encoder) -> Encoder:
    """The encoder as an actor receives it: without a network the driver may have loaded (a hub model's
    commit is resolved by loading it), which every actor loads itself."""
    clone = copy.copy(encoder)
    if getattr(clone, "model", None) is not None:
        clone.model = None
    return clone


def _gpu_dtype(spec: str) -> str:
    from feat.extract.device import select_dtype

    return select_dtype(spec, "cuda:0")


def _blank_pixels(transform):
    from PIL import Image

    return np.asarray(transform(Image.new("RGB", (64, 64))))


def _decode_row(row: dict, transform, shape: tuple) -> dict:
    """Runs in a CPU task: one row's pixels, or zeros and the reason there are none."""
    from feat.extract.image_loader import load_pixels

    pixels, reason = load_pixels(row["path"], row["error"], transform)
    pixels = np.zeros(shape, dtype=np.float32) if pixels is None else np.asarray(pixels, dtype=np.float32)
    if pixels.shape != shape:
        raise FeatError(f"row {row['row']}: the encoder's transform gave pixels of shape {pixels.shape}, not the "
                        f"{shape} it gives a blank image; the batch cannot be stacked")
    return {"row": row["row"], "pixels": pixels, "reason": reason, "text": row["text"]}


class _Actor:
    """One model load per actor, then one forward pass per call."""

    def __init__(self, encoder: Encoder, runtime: Runtime, threads: int, known_dim: int | None):
        import torch

        # The actor's share of the node (1 CPU beside a GPU), not every core of it: GPU actors too.
        torch.set_num_threads(threads)
        if runtime.dtype == "float32":  # float32 indeed, as the local backend computes it (device.torch_settings)
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
        self.encoder = encoder
        _ensure_loaded(encoder, runtime)
        self.dim = known_dim


class _TextActor(_Actor):
    def __call__(self, batch: dict) -> dict:
        rows, texts = np.asarray(batch["rows"][0], dtype=np.int64), [str(t) for t in batch["texts"][0]]
        vectors = self.encoder.encode_texts(texts)
        return {"row": rows, "vector": vectors, "reason": np.full(len(rows), "", dtype=object),
                "forward": np.arange(len(rows)) == 0}


class _ImageActor(_Actor):
    def __call__(self, batch: dict) -> dict:
        import torch

        reasons = [str(r) for r in batch["reason"]]
        good = [j for j, reason in enumerate(reasons) if not reason]
        if good:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            if self.encoder.runtime.device.startswith("cuda"):
                pixels = pixels.pin_memory()
            vectors = encode_images(self.encoder, [str(batch["text"][j]) for j in good], pixels)
            self.dim = vectors.shape[1]
        if self.dim is None:
            self.dim = probe_dim(self.encoder)
        matrix = np.zeros((len(reasons), self.dim), dtype=np.float32)
        if good:
            matrix[good] = vectors
        forward = np.zeros(len(reasons), dtype=bool)
        forward[good[:1]] = True
        return {"row": np.asarray(batch["row"], dtype=np.int64), "vector": matrix,
                "reason": np.asarray(reasons, dtype=object), "forward": forward}
