"""Helpers shared by the benchmark scripts: data, interleaved timing, subprocess runs, Markdown tables.

The benchmark machines are shared and noisy, so no script compares absolute times across runs: every
comparison runs its variants interleaved in one process (A B, then B A, ...), repeats, and reports the
median of each and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

MVSA_CSV = Path(os.environ.get("FEAT_MVSA_CSV", "/work/shared/data/mvsa_single/data.csv"))


# ----- arguments and scratch space -------------------------------------------------------------------
def parser(description: str, rows: int | None = None, rounds: int | None = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    if rows is not None:
        p.add_argument("--rows", type=int, default=rows, help=f"rows to use (default {rows})")
    if rounds is not None:
        p.add_argument("--rounds", type=int, default=rounds, help=f"interleaved repetitions (default {rounds})")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for this process and OMP_NUM_THREADS for child processes (default: "
                        "torch's own, one per core); 1 avoids OpenMP barrier stalls on a contended machine")
    return p


def encoder_options(p: argparse.ArgumentParser, image_rows: int) -> None:
    """--encoders, --image-rows (image encoders run on fewer rows: their forward pass is ~20x a text
    encoder's) and --batch-size, for the scripts that compare encoders."""
    p.add_argument("--encoders", default="minilm,effnet")
    p.add_argument("--image-rows", type=int, default=image_rows, help=f"rows for image encoders (default {image_rows})")
    p.add_argument("--batch-size", type=int, default=32)


def start(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the arguments and apply --threads."""
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    return args


@contextlib.contextmanager
def scratch(args) -> Iterator[Path]:
    """The scratch folder of a run; removed at the end unless --keep or --workdir was given."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir
        return
    folder = Path(tempfile.mkdtemp(prefix="feat-bench-"))
    try:
        yield folder
    finally:
        if args.keep:
            print(f"(scratch kept in {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def skip(message: str) -> None:
    print(f"SKIPPED: {message}")
    sys.exit(0)


# ----- data ------------------------------------------------------------------------------------------
def mvsa_subset(folder: Path, rows: int | None) -> tuple[Path, Path]:
    """(csv, image_root) of the first `rows` rows of MVSA-Single (all rows for None); exits with a SKIPPED
    message when the data set is not on this machine."""
    if not MVSA_CSV.exists():
        skip(f"MVSA-Single not found at {MVSA_CSV} (set FEAT_MVSA_CSV to its data.csv)")
    import pandas as pd

    frame = pd.read_csv(MVSA_CSV, dtype=str, keep_default_na=False)
    if rows is not None:
        frame = frame.head(rows)
    path = folder / f"mvsa_{len(frame)}.csv"
    frame.to_csv(path, index=False)
    return path, MVSA_CSV.parent


def synthetic(folder: Path, rows: int, image_size: int = 64, images: bool = True, seed: int = 0) -> Path:
    """feat's synthetic caption + picture data set (`feat.synthetic`), made once per folder; with
    images=False the CSV has no image column (text encoders only)."""
    from feat.synthetic import make_synthetic_dataset

    target = folder / f"synthetic_{rows}_{image_size}"
    csv = target / "data.csv"
    if not csv.exists():
        make_synthetic_dataset(target, rows=rows, seed=seed, image_size=image_size)
    if images:
        return csv
    import pandas as pd

    text_only = target / "texts.csv"
    if not text_only.exists():
        pd.read_csv(csv, dtype=str, keep_default_na=False).drop(columns=["image"]).to_csv(text_only, index=False)
    return text_only


# ----- timing ----------------------------------------------------------------------------------------
class Timings(dict):
    """name -> wall seconds of each run; `.cpu` holds this process's CPU seconds (all threads) alike."""

    def __init__(self, names):
        super().__init__({name: [] for name in names})
        self.cpu: dict[str, list[float]] = {name: [] for name in names}

    def ratio(self, slow: str, fast: str, cpu: bool = False) -> float:
        """median(slow) / median(fast): how many times faster `fast` is."""
        source = self.cpu if cpu else self
        return median(source[slow]) / median(source[fast])


def interleave(variants: dict[str, Callable[[], Any]], rounds: int) -> tuple[Timings, dict]:
    """Run every variant once per round, in alternating order (A B, B A, ...); returns the wall and CPU
    seconds of each run per variant and the last result of each."""
    times = Timings(variants)
    results: dict[str, Any] = {}
    names = list(variants)
    for round_ in range(rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            started, cpu = time.perf_counter(), time.process_time()
            results[name] = variants[name]()
            times[name].append(time.perf_counter() - started)
            times.cpu[name].append(time.process_time() - cpu)
    return times, results


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """'median (min-max)' in seconds."""
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


# ----- feat ------------------------------------------------------------------------------------------
def feat_command() -> list[str]:
    script = Path(sys.executable).with_name("feat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "feat.cli"]


def run_feat(args: list[str], env: dict | None = None):
    """Run `feat ARGS` as a child process; (wall seconds, completed process). Raises on failure."""
    started = time.perf_counter()
    done = subprocess.run([*feat_command(), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"feat {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done


def child_peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """Run `command` in a fresh child process; (wall seconds, its peak RSS in MiB from ru_maxrss)."""
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all waited-for children, so every measurement runs
    # in a throw-away intermediate process that has exactly one child: the command.
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.perf_counter(); code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,"
             " stderr=subprocess.PIPE, text=True)\n"
             "s = time.perf_counter() - t\n"
             "if code.returncode: sys.exit(code.stderr[-2000:])\n"
             "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    seconds, kib = done.stdout.split()
    return float(seconds), int(kib) / 1024


def extract(data: Path, cache: Path, encoders: list[str], **config):
    """`feat.extract.runner.extract` in this process; (wall seconds, ExtractReport)."""
    from feat.extract.runner import ExtractConfig, extract as run

    started = time.perf_counter()
    report = run(ExtractConfig(data=Path(data), cache=Path(cache), encoders=encoders, **config))
    return time.perf_counter() - started, report


def load_encoder(name: str, dtype: str = "float32"):
    """A registered encoder with its weights loaded on the CPU."""
    from feat.extract.base import Runtime
    from feat.extract.registry import create_encoder

    encoder = create_encoder(name)
    encoder.load(Runtime(device="cpu", dtype=dtype))
    return encoder


def text_forward(encoder, batch):
    """The bare text step: forward of one tokenised batch, then the encoder's pooling (and L2 norm)."""
    import torch

    from feat.extract.hf_text import pool

    with torch.inference_mode():
        pooled = pool(encoder.model(**batch), batch["attention_mask"], encoder.pooling)
        if encoder.normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled.float().numpy()


# ----- output ----------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are printed as given, so format them before."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line: CPU model, cores, RAM, torch and feat versions, load average when the benchmark started."""
    import torch

    import feat

    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), feat {feat.__version__}, Python {platform.python_version()}; "
            f"load average {load}")


def report(title: str, body: str, notes: list[str] = ()) -> None:
    print(f"\n## {title}\n\n{machine()}\n\n{body}\n")
    for note in notes:
        print(f"- {note}")
    sys.stdout.flush()
