"""CPU bf16: `feat extract --dtype bfloat16` vs float32 on the CPU: speed ratio and largest difference.

For each encoder, interleaved `--rounds` times, `extract()` of the first rows of MVSA-Single into a fresh
cache with dtype float32, then bfloat16 (stored vectors are float32 in both). Printed: the speed ratio
(float32 seconds ÷ bfloat16 seconds; > 1 means bf16 is faster), the largest absolute difference between
the stored vectors, the same relative to the largest float32 value, and the lowest cosine similarity of a
row pair. Run: python benchmarks/cpu_bf16.py [--rows 400] [--image-rows 160] [--rounds 3]
"""

from __future__ import annotations

import shutil

import numpy as np

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=400, rounds=3)
    C.encoder_options(p, image_rows=160)
    args = C.start(p)
    from feat.cache import FeatureCache

    rows = []
    with C.scratch(args) as folder:
        for name in args.encoders.split(","):
            data, image_root = C.mvsa_subset(folder, args.image_rows if name == "effnet" else args.rows)

            def run(dtype, name=name, data=data, image_root=image_root):
                cache = folder / f"cache-{name}-{dtype}"
                shutil.rmtree(cache, ignore_errors=True)
                C.extract(data, cache, [name], image_root=image_root, device="cpu", dtype=dtype,
                          batch_size=args.batch_size)
                stored = FeatureCache(cache).read(name).rows
                return stored.matrix[stored.valid]

            for dtype in ("float32", "bfloat16"):  # one-time imports and file reads, outside the timing
                C.load_encoder(name, dtype)
            times, results = C.interleave({"float32": lambda: run("float32"), "bfloat16": lambda: run("bfloat16")},
                                          args.rounds)
            exact, half = results["float32"].astype(np.float64), results["bfloat16"].astype(np.float64)
            diff = float(np.abs(exact - half).max())
            cosine = (exact * half).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(half, axis=1))
            speed = times.ratio("float32", "bfloat16")
            rows.append([name, len(exact), C.spread(times["float32"]), C.spread(times["bfloat16"]),
                         f"**{speed:.2f}x**", f"{times.ratio('float32', 'bfloat16', cpu=True):.2f}x",
                         f"**{diff:.3g}**", f"{diff / np.abs(exact).max():.2%}", f"{cosine.min():.5f}"])
    headers = ["encoder", "rows", "float32 s", "bfloat16 s", "bf16 speed-up (wall)", "bf16 speed-up (CPU time)",
               "max abs diff", "÷ max abs float32 value", "min cosine"]
    C.report(f"CPU bf16 (MVSA-Single, first rows, batch {args.batch_size}, {args.rounds} interleaved rounds; "
             "stored as float32)", C.table(headers, rows))


if __name__ == "__main__":
    main()
