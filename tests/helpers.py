"""Helpers shared by the extraction tests: the CLI runner, small datasets, image factories, two tiny
deterministic encoders, and a subprocess entry point for the kill -9 tests.

The tiny encoders exercise the real runner, cache and CLI without the seconds a real model costs to load.
`ProbeTextEncoder` is deliberately sensitive to the batch a text is encoded in (as dynamic padding can be
in floating point): a vector is bit-identical only if its batch had exactly the same members, so a resume
that forms different batches than an uninterrupted run is caught.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from feat.extract.base import ImageEncoder, JointEncoder, TextEncoder

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
MVSA = REPO.parent / "shared" / "data" / "mvsa_single" / "data.csv"
TEST_ENCODERS = {"probe-text": "helpers:ProbeTextEncoder", "tiny-image": "helpers:TinyImageEncoder",
                 "probe-joint": "helpers:ProbeJointEncoder", "probe-wide": "helpers:WideProbeTextEncoder"}


# ----- CLI -------------------------------------------------------------------------------------------
def cli(*args, expect: int | None = 0):
    """Run `feat ARGS` in-process; check the exit code unless `expect` is None."""
    from typer.testing import CliRunner

    from feat.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if expect is not None and result.exit_code != expect:
        raise AssertionError(f"feat {' '.join(map(str, args))}: exit {result.exit_code} != {expect}\n"
                             f"{result.output}\n{result.exception!r}")
    return result


def register_test_encoders(monkeypatch) -> None:
    from feat.extract import registry

    for name, target in TEST_ENCODERS.items():
        monkeypatch.setitem(registry.ENCODERS, name, target)


def mock_cuda(monkeypatch, count: int, bf16: bool | list[bool] = True) -> None:
    """Make torch see `count` CUDA devices (no GPU is lent to this project), on a machine that also looks
    as if it had a GPU driver, since device selection checks for one before asking torch. `bf16`: whether
    the devices (or each device) compute bfloat16 natively (compute capability 8.0 rather than 7.5);
    `is_bf16_supported` says yes regardless, as torch does for emulated bfloat16."""
    import torch

    import feat.extract.device as device

    native = bf16 if isinstance(bf16, list) else [bf16] * count
    monkeypatch.setattr(device, "gpu_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0) if native[index or 0] else (7, 5))
    monkeypatch.setattr(torch.version, "hip", None)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----- data ------------------------------------------------------------------------------------------
def write_csv(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame.from_records(records).to_csv(path, index=False)
    return path


def text_table(path: Path, rows: int, seed: int = 0, max_words: int = 30) -> Path:
    """Texts of very different lengths (so length sorting matters), each unique (it names its id)."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sun", "rain", "joy", "grief", "cat", "dog", "tree"]
    records = []
    for i in range(rows):
        n = int(rng.integers(1, max_words))
        body = " ".join(words[int(k)] for k in rng.integers(0, len(words), n))
        records.append({"id": f"r{i:05d}", "text": f"row{i} {body}", "label": ["pos", "neg"][i % 2],
                        "split": ("train", "train", "train", "dev", "test")[i % 5]})
    return write_csv(path, records)


def png_bytes(size=(24, 24), colour=(200, 30, 30), mode="RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(size=(64, 48), colour=(30, 120, 200), mode="RGB", **save) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.new(mode, size, colour)
    # Texture, so that a truncated file really lacks pixel data (a flat JPEG is a few hundred bytes).
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(), mode)
    image.save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def png_bomb_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header announcing width x height pixels with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# ----- tiny encoders ---------------------------------------------------------------------------------
class ProbeTextEncoder(TextEncoder):
    """8-d vectors from the text's hash, plus two batch-dependent columns (padded length, batch digest).

    FEAT_TEST_BATCH_DELAY (seconds per batch) slows it down so that a kill lands mid-run;
    FEAT_TEST_BATCH_GATE=<file>: every batch after the first waits until that file exists (a run that holds
    the cache for as long as a test needs);
    FEAT_TEST_ENCODE_LOG appends the first word of every encoded text, one line per batch, after the batch.
    """

    batches_done = 0

    name = "probe-text"
    accepts = frozenset({"max_length"})
    default_max_length = 40

    def preprocessing(self) -> dict:
        return {"max_length": self.max_length, "probe": 1}

    def weights_identity(self) -> str:
        return "probe-weights-1"

    def load(self, runtime) -> None:
        self.runtime = runtime
        self.model = "loaded"

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [min(len(t.split()) + 2, self.max_length) for t in texts]

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        delay = float(os.environ.get("FEAT_TEST_BATCH_DELAY", "0"))
        if delay:
            time.sleep(delay)
        gate = os.environ.get("FEAT_TEST_BATCH_GATE")
        if gate and self.batches_done:
            while not os.path.exists(gate):
                time.sleep(0.01)
        self.batches_done += 1
        padded = max(self.token_lengths(texts))
        batch = hashlib.sha256("\x1e".join(texts).encode("utf-8", "surrogatepass")).digest()
        out = np.empty((len(texts), 8), dtype=np.float32)
        for i, text in enumerate(texts):
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
            out[i, :6] = np.frombuffer(digest[:24], dtype=np.uint32) / np.float32(2**32)
            out[i, 6] = padded / 64
            out[i, 7] = int.from_bytes(batch[:4], "little") / 2**32
        log = os.environ.get("FEAT_TEST_ENCODE_LOG")
        if log:
            with open(log, "a") as handle:
                handle.write(" ".join(t.split()[0] if t.split() else "-" for t in texts) + "\n")
        return out


class WideProbeTextEncoder(ProbeTextEncoder):
    """ProbeTextEncoder's vectors repeated to MiniLM's 384 dimensions: cache files of a realistic size."""

    name = "probe-wide"

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.tile(super().encode_texts(texts), 48)


class TinyTransform:
    """Picklable PIL -> (3, 4, 4) tensor in [0, 1]."""

    def __call__(self, image):
        import torch

        array = np.asarray(image.resize((4, 4)), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class TinyImageEncoder(ImageEncoder):
    """48-d vectors: a 4 x 4 thumbnail (+ 1, so that a real vector is never all zeros)."""

    name = "tiny-image"
    loads = 0  # class-wide count of model loads, to check that no-work runs load nothing

    def preprocessing(self) -> dict:
        return {"size": 4}

    def weights_identity(self) -> str:
        return "tiny-weights-1"

    def load(self, runtime) -> None:
        type(self).loads += 1
        self.runtime = runtime
        self.model = "loaded"

    def transform(self):
        return TinyTransform()

    def encode_pixels(self, pixels) -> np.ndarray:
        return pixels.flatten(1).float().numpy() + 1.0


class ProbeJointEncoder(JointEncoder):
    """52-d: the 4 x 4 thumbnail (+ 1) and 4 values from the text's hash, so both halves can be checked."""

    name = "probe-joint"

    def preprocessing(self) -> dict:
        return {"size": 4, "probe": 1}

    def weights_identity(self) -> str:
        return "probe-joint-1"

    def load(self, runtime) -> None:
        self.runtime = runtime
        self.model = "loaded"

    def transform(self):
        return TinyTransform()

    def encode_pairs(self, texts: list[str], pixels) -> np.ndarray:
        assert len(texts) == len(pixels)
        return np.concatenate([pixels.flatten(1).float().numpy() + 1.0, text_code(texts)], axis=1)


def text_code(texts: list[str]) -> np.ndarray:
    digests = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()[:16] for t in texts]
    return np.stack([np.frombuffer(d, dtype=np.uint32) / np.float32(2**32) for d in digests]).astype(np.float32)


# ----- subprocesses (kill -9 and shard tests) --------------------------------------------------------
def spawn(args, log: Path | None = None, delay: float = 0.0, kill_in: str | None = None,
          gate: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    for key in ("FEAT_TEST_KILL_IN", "FEAT_TEST_BATCH_GATE", "FEAT_TEST_ENCODE_LOG", "FEAT_TEST_BATCH_DELAY"):
        env.pop(key, None)
    if gate is not None:
        env["FEAT_TEST_BATCH_GATE"] = str(gate)
    if log is not None:
        env["FEAT_TEST_ENCODE_LOG"] = str(log)
    if delay:
        env["FEAT_TEST_BATCH_DELAY"] = str(delay)
    if kill_in:
        env["FEAT_TEST_KILL_IN"] = kill_in
    return subprocess.Popen([sys.executable, "-c", "import helpers; helpers.main()", *map(str, args)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def wait_for(condition, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _kill_in_checkpoint_save(stage: str, n: int) -> None:
    """SIGKILL inside the n-th fine-tuning `checkpoint.save`: `state` with its tensors file half-written,
    `index` with the new tensors written but checkpoint.json not yet, `cleanup` with checkpoint.json
    replaced but the previous checkpoint's files not yet removed."""
    import signal

    from feat.finetune import checkpoint
    from feat.fuse import artifacts

    real_save, calls = checkpoint.save, {"count": 0}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def save(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == n:
            if stage == "state":
                real_write = artifacts.atomic_write

                def half_write(path, write):
                    if not path.name.startswith("state-"):
                        return real_write(path, write)
                    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                    write(tmp)
                    os.truncate(tmp, tmp.stat().st_size // 2)
                    die()

                artifacts.atomic_write = half_write
            elif stage == "index":
                real_json = artifacts.write_json
                artifacts.write_json = lambda path, obj: die() if path.name == "checkpoint.json" else real_json(path, obj)
            elif stage == "cleanup":
                real_unlink = Path.unlink
                Path.unlink = lambda self, *a, **k: die() if self.suffix == ".safetensors" else real_unlink(self, *a, **k)
            else:
                raise SystemExit(f"unknown checkpoint kill stage {stage}")
        return real_save(*args, **kwargs)

    checkpoint.save = save


def main() -> None:
    """`python -c 'import helpers; helpers.main()' extract ...`: the feat CLI with the test encoders
    registered. FEAT_TEST_KILL_IN=<function>:<n> SIGKILLs this process inside the n-th call (1-based) of a
    cache function, after it has started writing: `write_rows` (a part or the final file half-written) or
    `unlink_parts` (the final file in place, parts not yet all removed); `checkpoint_<stage>` inside the
    n-th fine-tuning checkpoint save (see `_kill_in_checkpoint_save`)."""
    import signal

    from feat.cache import store
    from feat.extract import registry

    registry.ENCODERS.update(TEST_ENCODERS)
    kill = os.environ.get("FEAT_TEST_KILL_IN")
    if kill:
        where, n = kill.split(":")
        calls = {"count": 0}

        def half_write_then_die(original):
            def wrapper(f, *args, **kwargs):
                calls["count"] += 1
                if calls["count"] == int(n):
                    f.create_dataset("ids", data=np.zeros(1000))  # a half-written file on disk
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(f, *args, **kwargs)
            return wrapper

        if where == "write_rows":
            store._write_rows = half_write_then_die(store._write_rows)
        elif where == "unlink_parts":
            original_unlink = Path.unlink

            def unlink(self, *args, **kwargs):
                if self.name.startswith("part-"):
                    calls["count"] += 1
                    if calls["count"] == int(n):
                        os.kill(os.getpid(), signal.SIGKILL)
                return original_unlink(self, *args, **kwargs)

            Path.unlink = unlink
        elif where.startswith("checkpoint_"):
            _kill_in_checkpoint_save(where[len("checkpoint_"):], int(n))
        else:
            raise SystemExit(f"unknown FEAT_TEST_KILL_IN {kill}")
    from feat.cli import app

    sys.argv[0] = "feat"
    app()
