"""GPU figures this project could not measure: extraction and fine-tuning speed per encoder and dtype.

For each encoder and compute dtype, on `--device` (default cuda:0):
- extract items/s: `extract()` of `--rows` synthetic rows (feat.synthetic) into a fresh cache: table load,
  hashing, model load, decoding or tokenisation, forward passes, HDF5 commits and merge;
- bare items/s: the same model, already loaded, over inputs prepared beforehand and already on the device
  (token ids in feat's length-sorted batches, image tensors), same batch size and dtype: forward + pooling,
  timed up to `torch.cuda.synchronize()`;
- extract ÷ bare (1.0: feat adds nothing to the forward passes; the CPU target is >= 0.9);
- finetune steps/s: `feat finetune` of a single-encoder fuse run on that cache (the cache's dtype is the
  fine-tuning's: bfloat16/float16 weights with float32 master copies, float32 under --amp auto), `--steps`
  optimizer steps of `--batch-size` rows, from its metrics.json (training steps only, no evaluation);
- peak GPU memory of each measurement (torch.cuda.max_memory_allocated).

Without a visible GPU it says so, lists what it would measure, and stops, unless --cpu: then it measures the
same on the CPU (labelled cpu; no number is ever made up or carried over from another machine).
Run: python benchmarks/gpu.py [--encoders minilm,effnet] [--dtypes auto] [--rows 512] [--steps 10] [--cpu]
"""

from __future__ import annotations

import shutil
import time

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=512, rounds=None)
    C.encoder_options(p, image_rows=256)
    p.add_argument("--dtypes", default="auto", help="comma-separated compute dtypes, or auto (float32 and the "
                                                     "GPU's half precision; float32 and bfloat16 on a CPU)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--steps", type=int, default=10, help="fine-tuning optimizer steps per measurement")
    p.add_argument("--cpu", action="store_true", help="without a GPU, measure the CPU path instead of stopping")
    args = C.start(p)
    import torch

    device = args.device
    if not torch.cuda.is_available():
        print("NO GPU: torch sees no CUDA device (torch.cuda.is_available() is False) on this machine.\n"
              "On a GPU this script prints, per encoder and compute dtype: feat extract items/s, a bare forward "
              "loop's items/s, their ratio, feat finetune steps/s, and the peak GPU memory of each.")
        if not args.cpu:
            print("Nothing measured. Run it where a GPU is visible, or with --cpu to measure the CPU path.")
            return
        device = "cpu"
    from feat.extract.device import native_bf16

    if args.dtypes != "auto":
        dtypes = args.dtypes.split(",")
    elif device == "cpu":
        dtypes = ["float32", "bfloat16"]
    else:
        dtypes = ["float32", "bfloat16" if native_bf16(device) else "float16"]
    rows = []
    with C.scratch(args) as folder:
        for name in args.encoders.split(","):
            images = name != "minilm" and name not in ("hf-text", "deberta", "clip-text")
            count = args.image_rows if images else args.rows
            data = C.synthetic(folder, count, image_size=128, images=True)
            for dtype in dtypes:
                rows.append(measure(name, dtype, device, data, folder, args))
    title = (f"{'GPU ' + torch.cuda.get_device_name(device) if device != 'cpu' else 'CPU (no GPU visible)'}: "
             f"synthetic rows, batch {args.batch_size}, {args.steps} fine-tuning steps")
    headers = ["encoder", "dtype", "rows", "extract items/s", "bare items/s", "extract ÷ bare", "finetune steps/s",
               "peak GPU MiB (extract / bare / finetune)"]
    C.report(title, C.table(headers, rows))


def measure(name: str, dtype: str, device: str, data, folder, args) -> list:
    import pandas as pd

    cache = folder / f"cache-{name}-{dtype}"
    shutil.rmtree(cache, ignore_errors=True)
    rows = len(pd.read_csv(data))
    reset_peak(device)
    seconds, _ = C.extract(data, cache, [name], image_root=data.parent, device=device, dtype=dtype,
                           batch_size=args.batch_size)
    extract_rate = rows / seconds
    peaks = [peak_mib(device)]
    bare_rate = bare(name, dtype, device, data, args.batch_size)
    peaks.append(peak_mib(device))
    steps = finetune_rate(name, cache, data, folder / f"run-{name}-{dtype}", device, args)
    peaks.append(peak_mib(device))
    return [name, dtype, rows, f"{extract_rate:.1f}", f"{bare_rate:.1f}", f"**{extract_rate / bare_rate:.2f}**",
            f"{steps:.2f}", " / ".join(peaks)]


def bare(name: str, dtype: str, device: str, data, batch_size: int) -> float:
    """Items/s of forward + pooling over prepared, device-resident batches."""
    import pandas as pd
    import torch

    from feat.extract.base import ImageEncoder, Runtime
    from feat.extract.images import decode_image
    from feat.extract.registry import create_encoder

    encoder = create_encoder(name)
    encoder.load(Runtime(device=device, dtype=dtype))
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    if isinstance(encoder, ImageEncoder):
        transform = encoder.transform()
        tensors = [transform(decode_image(str(data.parent / p))[0]) for p in frame["image"]]
        inputs = [encoder.collate(None, torch.stack(tensors[i:i + batch_size]))
                  for i in range(0, len(tensors), batch_size)]
    else:
        texts = sorted(frame["text"].tolist(), key=lambda t: -len(encoder.token_lengths([t])))
        inputs = [encoder.collate(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    reset_peak(device)
    with torch.inference_mode():
        encoder.embed(inputs[0])  # warm-up: kernels chosen, memory pools filled
        synchronize(device)
        started = time.perf_counter()
        for batch in inputs:
            encoder.embed(batch)
        synchronize(device)
    return len(frame) / (time.perf_counter() - started)


def finetune_rate(name: str, cache, data, out, device: str, args) -> float:
    from feat.finetune.config import FinetuneConfig
    from feat.finetune.run import FinetuneSpec, run_finetune

    run = out.with_name(out.name + "-fuse")
    C.run_feat(["fuse", "--cache", str(cache), "--features", name, "--strategy", "single", "--label", "label",
                "--out", str(run), "--epochs", "2"])
    reset_peak(device)
    config = FinetuneConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch_size, parity_tolerance=1e-3)
    result = run_finetune(FinetuneSpec(run, data, out, config, device=device, curve=False))[0]
    return 1 / result.metrics["seconds_per_step"]


def reset_peak(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: str) -> str:
    import torch

    return "-" if device == "cpu" else f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}"


def synchronize(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
