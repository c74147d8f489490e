"""Warm cache: a second `feat extract` on a complete cache of 10,000 rows must run no forward pass, < 2 s.

Data: feat's synthetic caption + picture set, `--rows` rows (64 px PNGs). The cache is made by a first
`extract()` with minilm and effnet whose weights and forward passes are swapped for stand-ins returning zero
vectors (`--real` for real ones: 10,000 EfficientNet passes take most of an hour on a 2-core CPU). The warm
run never looks at stored vectors, only at ids, content hashes and fingerprints, which that first run
computes exactly as usual. Then, interleaved `--rounds` times, the same extraction again with the real
encoder classes:
- as a child process `feat extract DATA -e minilm -e effnet --cache C` (Python start and imports included),
  with the default `--device auto` and with `--device cpu`;
- in this process, `extract()` (imports already done).
Each run must report 0 forward passes for both encoders. `--profile` prints where the in-process warm run
spends its time.  Run: python benchmarks/warm_cache.py [--rows 10000] [--rounds 3] [--profile]
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import sys
import time

import numpy as np

import _common as C

TARGET = 2.0
ENCODERS = ["minilm", "effnet"]


@contextlib.contextmanager
def stand_ins(real: bool):
    """minilm and effnet without weights or forward passes: zero vectors of the right size (unless `real`)."""
    import torch

    from feat.extract.effnet import EfficientNetLite0Encoder as effnet
    from feat.extract.minilm import MiniLMEncoder as minilm

    def load(self, runtime):
        self.runtime, self.model = runtime, "stand-in"

    def zeros(dim):
        return lambda self, batch: np.zeros((len(batch), dim), dtype=np.float32)

    patches = {effnet: {"load": load, "transform": lambda self: (lambda image: torch.zeros(1)),
                        "encode_pixels": zeros(1280)},
               minilm: {"load": load, "token_lengths": lambda self, texts: [len(t) for t in texts],
                        "encode_texts": zeros(384)}}
    saved = [(cls, key, cls.__dict__.get(key)) for cls, methods in patches.items() for key in methods]
    if not real:
        for cls, methods in patches.items():
            for key, method in methods.items():
                setattr(cls, key, method)
    try:
        yield
    finally:
        for cls, key, method in saved:
            if method is None:
                with contextlib.suppress(AttributeError):
                    delattr(cls, key)
            else:
                setattr(cls, key, method)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=10_000, rounds=3)
    p.add_argument("--real", action="store_true", help="build the cache with real forward passes (slow)")
    p.add_argument("--profile", action="store_true", help="print a cProfile of one in-process warm run")
    args = C.start(p)
    with C.scratch(args) as folder:
        started = time.perf_counter()
        data = C.synthetic(folder, args.rows, image_size=64)
        made = time.perf_counter() - started
        cache = folder / "cache"
        with stand_ins(args.real):
            cold, report = C.extract(data, cache, ENCODERS, device="cpu")
        print(f"data made in {made:.1f} s; first (cold) extraction {cold:.1f} s: "
              + "; ".join(f"{e.name} {e.encoded} encoded in {e.seconds:.1f} s" for e in report.encoders),
              file=sys.stderr)
        cli_args = ["extract", data, *sum((["-e", e] for e in ENCODERS), []), "--cache", cache]
        forward_passes = {"subprocess": [], "subprocess, cpu": [], "in-process": []}

        def child(how="subprocess", extra=()):
            seconds, done = C.run_feat([*cli_args, *extra])
            out = done.stdout + done.stderr
            lines = [line for line in out.splitlines() if line.split(":")[0] in ENCODERS]
            reused = sum("no forward pass" in line for line in lines)
            forward_passes[how].append(0 if reused == len(ENCODERS) else f"? {out[-300:]}")

        def in_process():
            _, warm = C.extract(data, cache, ENCODERS, device="cpu")
            forward_passes["in-process"].append(sum(e.batches + e.encoded for e in warm.encoders))
            return warm

        times, results = C.interleave(
            {"subprocess": child, "subprocess, cpu": lambda: child("subprocess, cpu", ["--device", "cpu"]),
             "in-process": in_process},
            args.rounds)
        imports, _ = C.child_peak_rss_mib([sys.executable, "-c", "import torch"])
        encoders = results["in-process"].encoders
        rows = []
        labels = {"subprocess": "`feat extract` (child process, default `--device auto`)",
                  "subprocess, cpu": "`feat extract --device cpu` (child process)",
                  "in-process": "`extract()` (in process)"}
        for how, label in labels.items():
            ok = all(n == 0 for n in forward_passes[how])
            rows.append([label, args.rows, ", ".join(map(str, forward_passes[how])),
                         C.spread(times[how]), C.verdict(ok and C.median(times[how]) < TARGET)])
        notes = ["per encoder, in-process: " + "; ".join(f"{e.name} {e.seconds:.2f} s ({e.reused} reused, "
                                                         f"{e.batches} batches)" for e in encoders),
                 f"for scale: `python -c 'import torch'` alone took {imports:.2f} s "
                 "as a child process here", f"cold extraction ({'real' if args.real else 'stand-in encoders'}): {cold:.1f} s"]
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(in_process)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            print(text.getvalue())
    headers = ["run", "rows", "forward passes (each round)", "wall s, median (min-max)", f"< {TARGET} s, 0 passes"]
    C.report(f"Warm cache (synthetic, {args.rows} rows, minilm + effnet, {args.rounds} interleaved rounds)",
             C.table(headers, rows), notes)


if __name__ == "__main__":
    main()
