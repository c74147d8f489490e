"""Dynamic padding: feat's length-sorted, per-batch padding vs padding every text to 128 tokens.

Interleaved, `--rounds` times, on the first `--rows` texts of MVSA-Single with minilm (batch 32, float32):
- feat: `extract()` into a fresh cache (texts sorted by token length, each batch padded to its longest text;
  model load, hashing and HDF5 writes included);
- reference: the notebook's loop: model already loaded, texts in table order, tokenizer(padding="max_length",
  max_length=128, truncation=True), forward, the same masked mean pooling and L2 normalisation.
Both truncate at 128 tokens (`--max-length 128` for feat), so only the padding differs; the stored vectors
are compared with the reference's. Targets: >= 2x faster, max |difference| <= 1e-4.
Run: python benchmarks/dynamic_padding.py [--rows 600] [--rounds 3]
"""

from __future__ import annotations

import shutil

import numpy as np

import _common as C

SPEED_TARGET, ERROR_TARGET, PAD_TO = 2.0, 1e-4, 128


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=600, rounds=3)
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    args = C.start(p)
    import pandas as pd

    from feat.cache import FeatureCache
    from feat.extract.base import EncoderOptions

    with C.scratch(args) as folder:
        data, _ = C.mvsa_subset(folder, args.rows)
        texts = pd.read_csv(data, dtype=str, keep_default_na=False)["text"].tolist()
        encoder = C.load_encoder(args.encoder)
        tokenizer = encoder.tokenizer
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=PAD_TO)["input_ids"]]
        full = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        cache = folder / "cache"

        def feat_run():
            shutil.rmtree(cache, ignore_errors=True)
            C.extract(data, cache, [args.encoder], options=EncoderOptions(max_length=PAD_TO), device="cpu",
                      dtype="float32", batch_size=args.batch_size, image_root=C.MVSA_CSV.parent)
            return FeatureCache(cache).read(args.encoder).rows.matrix

        def reference_run():
            out = []
            for start in range(0, len(texts), args.batch_size):
                batch = tokenizer(texts[start:start + args.batch_size], padding="max_length", max_length=PAD_TO,
                                  truncation=True, return_tensors="pt")
                out.append(C.text_forward(encoder, batch))
            return np.concatenate(out)

        times, results = C.interleave({"feat": feat_run, "reference": reference_run}, args.rounds)
        diff = float(np.abs(results["feat"] - results["reference"]).max())
        speed = times.ratio("reference", "feat")
        cpu_speed = times.ratio("reference", "feat", cpu=True)
        padded = len(texts) * PAD_TO
        rows = [[args.encoder, len(texts), args.batch_size, f"{np.mean(lengths):.1f} / {max(lengths)}",
                 f"{sum(lengths) / padded:.0%}", C.spread(times["feat"]), C.spread(times["reference"]),
                 f"**{speed:.2f}x**", f"{cpu_speed:.2f}x", C.verdict(speed >= SPEED_TARGET), f"**{diff:.1e}**",
                 C.verdict(diff <= ERROR_TARGET)]]
    headers = ["encoder", "texts", "batch", "tokens mean / max", "real tokens ÷ 128-padded", "feat extract() s",
               f"reference (pad to {PAD_TO}) s", "speed-up (wall)", "speed-up (CPU time)", f"≥ {SPEED_TARGET}x",
               "max abs diff", f"≤ {ERROR_TARGET:g}"]
    notes = [f"{sum(n > PAD_TO for n in full)} of {len(texts)} texts are longer than {PAD_TO} tokens and are "
             f"truncated by both (feat's minilm default is {encoder.default_max_length})",
             "feat's time includes its model load, hashing and HDF5 writes; the reference's model is preloaded"]
    C.report(f"Dynamic padding (MVSA-Single, first {args.rows} texts, float32, CPU, {args.rounds} interleaved rounds)",
             C.table(headers, rows), notes)


if __name__ == "__main__":
    main()
