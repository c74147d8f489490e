"""Memory: peak RSS of `feat extract` at 10x rows ÷ at 1x rows (synthetic data), target <= 1.2.

Each extraction runs as its own child process `feat extract DATA -e ENCODER --cache FRESH --device cpu`
and its peak RSS is read from ru_maxrss (RUSAGE_CHILDREN of a one-child intermediate process), so the
figure includes Python, torch and the model: what a user's machine must hold.
- minilm on synthetic captions (no image column): `--text-rows` and 10x that;
- effnet on synthetic 64 px pictures: `--image-rows` and 10x that.
Run: python benchmarks/memory.py [--text-rows 1000] [--image-rows 100] [--encoders minilm,effnet]
"""

from __future__ import annotations

import _common as C

TARGET = 1.2
DIMS = {"minilm": 384, "effnet": 1280}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=None, rounds=None)
    p.add_argument("--text-rows", type=int, default=1000)
    C.encoder_options(p, image_rows=100)
    args = C.start(p)
    rows = []
    with C.scratch(args) as folder:
        for name in args.encoders.split(","):
            base = args.image_rows if name == "effnet" else args.text_rows
            measured = {}
            for n in (base, 10 * base):
                data = C.synthetic(folder, n, image_size=64, images=name == "effnet")
                command = [*C.feat_command(), "extract", str(data), "-e", name, "--cache", str(folder / f"c-{name}-{n}"),
                           "--device", "cpu", "--batch-size", str(args.batch_size)]
                measured[n] = C.child_peak_rss_mib(command)
            (t1, m1), (t10, m10) = measured[base], measured[10 * base]
            ratio = m10 / m1
            matrix = 10 * base * DIMS[name] * 4 / 2**20
            rows.append([name, f"{base} / {10 * base}", f"{m1:.0f}", f"{m10:.0f}", f"{(m10 - m1) / (9 * base) * 1024:.1f}",
                         f"{matrix:.1f}", f"{t1:.0f} / {t10:.0f}", f"**{ratio:.3f}**", C.verdict(ratio <= TARGET)])
    headers = ["encoder", "rows 1x / 10x", "peak RSS 1x MiB", "peak RSS 10x MiB", "KiB per extra row",
               "10x float32 matrix MiB", "wall s 1x / 10x", "10x ÷ 1x", f"≤ {TARGET}"]
    C.report("Memory (synthetic data, `feat extract` child processes, batch 32, float32, CPU)",
             C.table(headers, rows))


if __name__ == "__main__":
    main()
