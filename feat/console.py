"""One rich console (on stderr, so stdout stays clean for data) and the progress display of long steps."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from rich.console import Console

# soft_wrap: rich hard-wraps at 80 columns when stderr is no terminal (a log file, nohup, Slurm, CI), cutting
# paths and commands in half; a line stays one line, for the reader and for grep.
console = Console(stderr=True, highlight=False, soft_wrap=True)

# Seconds between two progress lines when stderr is no terminal: often enough to see a job move, rarely enough
# for an hour-long extraction to stay a readable log (360 lines).
PLAIN_EVERY = 10.0


@contextlib.contextmanager
def progress_bar(label: str, total: int, unit: str = "items", stage: str = "",
                 done: int = 0) -> Iterator[Callable[[int], None]]:
    """Progress of `total` `unit`s (`done` of them finished before), yielding `advance(n)`. `stage`: what
    happens before the first unit completes (e.g. "loading model"), shown until then. On a terminal, a bar with
    the rate and ETA; otherwise a plain line every PLAIN_EVERY seconds and one at the end."""
    if console.is_terminal:
        with _bar(label, total, unit, stage, done) as advance:
            yield advance
    else:
        with _lines(label, total, unit, stage, done) as advance:
            yield advance


@contextlib.contextmanager
def _bar(label: str, total: int, unit: str, stage: str, done: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{label} ({stage})" if stage else label, total=total, completed=done, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            progress.update(task, description=label, rate=f"{speed:7.1f} {unit}/s" if speed else "")

        yield advance


class _Counter:
    """Units done since the start, for the plain progress lines (advanced by the caller, read by the ticker)."""

    def __init__(self, label: str, total: int, unit: str, stage: str, done: int):
        self.label, self.total, self.unit, self.stage, self.base = label, total, unit, stage, done
        self.done, self.started, self.lock = done, time.monotonic(), threading.Lock()

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if n:
                self.stage = ""

    def line(self, final: bool = False) -> str:
        with self.lock:
            done, stage = self.done, self.stage
        elapsed = time.monotonic() - self.started
        head = f"{self.label}: {done}/{self.total} {self.unit}"
        if self.total:
            head += f" ({100 * done / self.total:.0f}%)"
        if stage and not final:
            return f"{head}, {stage}, elapsed {_clock(elapsed)}"
        if done == self.base and not final:  # no rate yet
            return f"{head}, elapsed {_clock(elapsed)}"
        # The rate counts only this run's units: a resumed job's earlier ones took no time here.
        rate = (done - self.base) / elapsed if elapsed > 0 else 0.0
        tail = f"{_rate(rate)} {self.unit}/s, elapsed {_clock(elapsed)}"
        if final:
            return f"{head}, {tail}, done"
        eta = _clock((self.total - done) / rate) if rate > 0 else "unknown"
        return f"{head}, {tail}, ETA {eta}"


@contextlib.contextmanager
def _lines(label: str, total: int, unit: str, stage: str, done: int) -> Iterator[Callable[[int], None]]:
    counter = _Counter(label, total, unit, stage, done)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(PLAIN_EVERY):
            console.print(counter.line(), markup=False)

    console.print(counter.line(), markup=False)
    ticker = threading.Thread(target=tick, name=f"progress-{label}", daemon=True)
    ticker.start()
    try:
        yield counter.advance
    finally:
        stop.set()
        ticker.join()
    console.print(counter.line(final=True), markup=False)


def _rate(per_second: float) -> str:
    """Two significant digits below 1/s: one 70-second ablation run is 0.014 runs/s, not 0.0."""
    return f"{per_second:.1f}" if per_second >= 1 else f"{per_second:.2g}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
