"""`feat finetune`: take a trained fusion run further by training its encoders end to end.

RUN is a `feat fuse` run folder, or an ablation folder (its best run by selection score, or its K best
configurations, each its run with the best validation score; with CV that run trains on its folds and
validates on its own fold). The output folder is laid out like a fuse run and `feat predict` loads it:
config.json, model.safetensors (head + fine-tuned encoders + standardisation), history.csv (epoch 0 = before
any step), predictions_dev.csv, predictions_test.csv, learning_curve.png, and metrics.json, written last,
with `initial_dev` (the parity-checked dev metrics before any step). checkpoint/ exists while it trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from feat import __version__
from feat.console import console
from feat.errors import InputError
from feat.finetune import checkpoint as ckpt
from feat.finetune.config import FREEZE, FinetuneConfig
from feat.finetune.saved import FINETUNE, ENCODERS, HEAD, STATS, check_fingerprint, encoder_from_fingerprint, \
    load_run, weights_identity
from feat.fuse import artifacts as art

RESULTS = "results.csv"  # with --top K > 1: one line per fine-tuned run


@dataclass
class FinetuneSpec:
    run: Path  # a fuse run folder, or an ablation folder
    data: Path  # the table the run's cache was extracted from: raw texts and image paths
    out: Path  # output folder (with --top K > 1, one sub-folder per run)
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    top: int = 1  # ablation folder: its K best configurations by selection score (each its best run by validation)
    cache: Path | None = None  # the run's cache (default: the folder its config.json records)
    image_root: Path | None = None  # default: the image root the cache was extracted with
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # image decoding processes
    resume: bool = False  # continue from out/checkpoint after a crash
    curve: bool = True  # draw learning_curve.png


@dataclass
class FinetuneResult:
    out: Path
    source: Path  # the fuse run it started from
    metrics: dict  # as in metrics.json
    metric: str  # the run's selection metric


def run_finetune(spec: FinetuneSpec) -> list[FinetuneResult]:
    """Under torchrun (WORLD_SIZE > 1), every process runs this; the first one writes (distributed.py)."""
    from feat.extract.device import select_device
    from feat.finetune import distributed

    check_config(spec.config)
    sources = resolve_sources(Path(spec.run), spec.top)
    world = distributed.start(select_device(spec.device))
    try:
        if len(sources) == 1:
            return [finetune_one(spec, sources[0], Path(spec.out), world)]
        results = [finetune_one(spec, source, Path(spec.out) / source.name, world) for source in sources]
    finally:
        world.close()
    if not world.main:
        return results
    rows = [{"run": str(r.source), "out": str(r.out), "metric": r.metric,
             "initial_dev": r.metrics["initial_dev"][r.metric], "dev": r.metrics["dev"][r.metric],
             "test": r.metrics["test"][r.metric], "best_epoch": r.metrics["best_epoch"]} for r in results]
    art.write_csv(Path(spec.out) / RESULTS, pd.DataFrame(rows))
    return results


def check_config(cfg: FinetuneConfig) -> None:
    if cfg.freeze not in FREEZE:
        raise InputError(f"--freeze must be one of {', '.join(FREEZE)}, not '{cfg.freeze}'")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.patience < 1:
        raise InputError("--epochs, --batch-size, --grad-accum and --patience must be at least 1")
    if cfg.max_steps < 0 or cfg.checkpoint_every < 0 or cfg.unfreeze_last < -1:
        raise InputError("--max-steps and --checkpoint-every must not be negative, --unfreeze-last is -1 (all) or more")


def resolve_sources(path: Path, top: int) -> list[Path]:
    """The fuse run(s) to fine-tune: RUN itself, or the best of an ablation folder."""
    if top < 1:
        raise InputError("--top must be at least 1")
    if (path / art.CONFIG).exists():
        if top != 1:
            raise InputError(f"--top {top} needs an ablation folder; {path} is one run")
        return [path]
    summary_csv, results_csv = path / "summary.csv", path / "results.csv"
    if not summary_csv.exists() or not results_csv.exists():
        raise InputError(f"{path} is neither a run folder (config.json) nor a finished ablation folder "
                         "(summary.csv, results.csv)")
    from feat.fuse.metrics import higher_is_better

    # summary.csv is ranked by selection score with each configuration's chosen trial; within it, the run
    # (seed, fold) with the best validation score
    summary = pd.read_csv(summary_csv, keep_default_na=False)
    results = pd.read_csv(results_csv, keep_default_na=False)
    metric = str(results["metric"].iloc[0])
    value = pd.to_numeric(results[f"val_{metric}"], errors="coerce")
    results = results.assign(_val=value if higher_is_better(metric) else -value)
    chosen = []
    for _, config in summary.head(top).iterrows():
        group = results[(results["features"] == config["features"]) & (results["strategy"] == config["strategy"])
                        & (results["trial"] == config["trial"])]
        chosen.append(path / group.sort_values("_val", ascending=False, kind="stable")["run"].iloc[0])
    return chosen


def _frozen_by_option(freeze: str, modality: str) -> bool:
    return {"text": "text", "vision": "image", "joint": "text+image"}.get(freeze) == modality


@dataclass
class _Assembled:
    """The model built from a run, and what feeds it."""

    model: object  # FinetuneModel
    rows: object  # RowSet
    modules: dict  # feature -> trainable encoder module (the live inputs)
    transforms: dict  # feature -> its encoder's image transform (image inputs only)
    trainable: dict  # feature -> what --unfreeze-last left trainable


def finetune_one(spec: FinetuneSpec, source: Path, out: Path, world=None) -> FinetuneResult:
    from feat.finetune.device import select_accelerator
    from feat.finetune.parity import as_cached, check_parity, tolerance_for
    from feat.finetune.train import class_weights, fit, new_loop

    from feat.finetune.distributed import World

    cfg, world = spec.config, world or World()
    saved = load_run(source)
    if saved.kind == FINETUNE:
        raise InputError(f"{source} is a fine-tuned run; fine-tune the fuse run it came from "
                         f"({saved.config.get('source_run')})")
    if spec.resume and (out / art.METRICS).exists() and not (out / ckpt.FOLDER).exists():
        console.print(f"{out} is already complete (metrics.json); nothing to resume")
        return FinetuneResult(out, source, art.read_json(out / art.METRICS), saved.config["metric"])
    if not spec.resume and (out / ckpt.FOLDER / ckpt.INDEX).exists():
        raise InputError(f"{out} holds the checkpoint of an unfinished fine-tuning: continue it with --resume, "
                         "or choose another --out")
    accel = select_accelerator(spec.device, cfg.amp)
    train_cfg, metric = saved.train_config(), saved.config["metric"]
    built = _assemble(spec, saved, accel)
    identity = {"source_run": str(source.resolve()), "finetune": asdict(cfg), "features": saved.features,
                "live": list(built.modules)}
    eval_batch = accel.eval_batch(cfg.batch_size)
    resumed = None
    if spec.resume:
        resumed = ckpt.load(out)
        if resumed is None:
            raise InputError(f"{out}: no checkpoint to resume (run without --resume to start)")
        if resumed.config != identity:
            changed = sorted(k for k in identity if resumed.config.get(k) != identity[k])
            raise InputError(f"{out}: the checkpoint was made with other settings ({', '.join(changed)} differ); "
                             "resume with the same options, or start again in another --out")
        loop = resumed.loop
        console.print(f"resuming {out} at epoch {loop['epoch']}, batch {loop['batch']} (step {loop['step']})")
    else:
        with as_cached(built.model, train_cfg.precision):
            initial, parity = check_parity(built.model, built.rows, saved, metric,
                                           tolerance_for(built.model, cfg.parity_tolerance), eval_batch,
                                           built.transforms, spec.num_workers, accel.pin_memory)
        loop = new_loop(initial, parity, metric)
        loop["calmed_columns"] = built.model.calm_constant_columns()
        if loop["calmed_columns"]:
            console.print(f"constant columns (float noise) scaled by 1 instead of their std from here on: "
                          f"{loop['calmed_columns']}")
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / art.METRICS).unlink(missing_ok=True)  # the folder is incomplete until metrics.json is back
        console.print(f"parity: dev {metric} {_fmt(initial[metric])} before any step = run's "
                      f"{_fmt(parity['run_dev'])} (max |Δp| {parity['max_probability_difference']:.2e}, "
                      f"tolerance {parity['tolerance']:.2g})")

    result = fit(built.model, built.rows, cfg, accel, metric, class_weights(built.rows, train_cfg.class_weights),
                 built.transforms, spec.num_workers, out, identity, loop, resumed, world)
    metrics = None
    if world.main:
        metrics = _write_outputs(spec, saved, built, accel, loop, result, out)
        ckpt.remove(out)
    return FinetuneResult(out, source, world.broadcast(metrics), metric)


def _assemble(spec: FinetuneSpec, saved, accel) -> _Assembled:
    """The run's encoders (checked against its fingerprints) in front of its head, with --freeze /
    --unfreeze-last / --grad-checkpointing. Each encoder is loaded in its cache's compute dtype, as extraction
    loaded it: a bfloat16 cache comes from bfloat16 weights and bfloat16 arithmetic, which neither float32
    weights nor autocast reproduce (MiniLM: 1.1% off, parity fails); float32 encoders train under --amp."""
    from feat.extract.base import FittedEncoder, Runtime
    from feat.finetune.data import batches, load_rows, ordered_chunks
    from feat.finetune.model import FinetuneModel, enable_grad_checkpointing, train_last_blocks

    cfg = spec.config
    encoders = {f: encoder_from_fingerprint(saved.base_fingerprint(f)) for f in saved.features}
    for feature, encoder in encoders.items():
        check_fingerprint(feature, encoder, saved.base_fingerprint(feature), f"run {saved.path}")
    live = {f: e for f, e in encoders.items() if not isinstance(e, FittedEncoder)
            and not _frozen_by_option(cfg.freeze, e.modality) and cfg.unfreeze_last != 0}
    if not live:
        raise InputError(f"nothing to fine-tune in {saved.path}: its inputs ({', '.join(encoders)}) are fitted "
                         "(TF-IDF) or frozen by --freeze / --unfreeze-last 0; `feat fuse` trains a head alone")
    rows = load_rows(saved, Path(spec.cache or saved.cache), spec.data, live, spec.image_root)
    for feature, encoder in live.items():
        encoder.load(Runtime(device=accel.device, dtype=saved.base_fingerprint(feature)["compute_dtype"]))
    modules = {f: e.trainable_module().requires_grad_(True) for f, e in live.items()}
    store_dtypes = {f: saved.base_fingerprint(f)["store_dtype"] for f in live}
    model = FinetuneModel(saved.features, modules, saved.head().requires_grad_(True), rows, saved.stats(),
                          store_dtypes, saved.train_config().missing).to(accel.device)
    transforms = {f: e.transform() for f, e in live.items() if "image" in e.modality}
    trainable = {}
    if cfg.unfreeze_last > 0:
        probe = next(batches(rows, ordered_chunks(rows.positions("dev")[:2], 2), transforms))
        model.eval()
        for feature, module in modules.items():
            trainable[feature] = train_last_blocks(module, cfg.unfreeze_last, lambda: model(probe))
    if cfg.grad_checkpointing:
        for module in modules.values():
            enable_grad_checkpointing(module)
    return _Assembled(model, rows, modules, transforms, trainable)


def _write_outputs(spec: FinetuneSpec, saved, built: _Assembled, accel, loop: dict, result, out: Path) -> dict:
    """Test once, with the best state; then the run folder, metrics.json last."""
    from feat.finetune.parity import evaluate
    from feat.fuse.train import split_metrics

    metric, rows = saved.config["metric"], built.rows
    splits = {}
    for split in ("dev", "test"):
        positions = rows.positions(split)
        logits = evaluate(built.model, rows, positions, accel.eval_batch(spec.config.batch_size), built.transforms,
                          spec.num_workers, accel.pin_memory)
        splits[split] = (positions, *split_metrics(logits, rows.y[positions]))
    tensors, fingerprints = _weights_and_fingerprints(saved, built.model, built.modules)
    live = list(built.modules)
    config = {"kind": FINETUNE, "feat_version": __version__, "source_run": str(saved.path.resolve()),
              "cache": str(Path(spec.cache or saved.cache).resolve()), "features": saved.features,
              "label": saved.config["label"], "classes": saved.classes, "input_dims": saved.config["input_dims"],
              "metric": metric, "valid_from": saved.config["valid_from"], "head": saved.config["head"],
              "train": saved.config["train"], "finetune": asdict(spec.config), "tuned": live,
              "fixed": [f for f in saved.features if f not in live], "fingerprints": fingerprints,
              "base_fingerprints": saved.config["fingerprints"], "items_digest": saved.config["items_digest"],
              "data": rows.report, "trainable": built.trainable, "device": accel.device,
              "amp": accel.amp_dtype or "float32", "precision": precision_report(built.model, accel),
              "num_workers": spec.num_workers}
    art.write_json(out / art.CONFIG, config)
    art.save_model(out / art.MODEL, tensors, {"format": "pt"})
    history = pd.DataFrame(result.history)
    art.write_csv(out / art.HISTORY, history)
    for split, (positions, _, prob) in splits.items():
        art.write_csv(out / f"predictions_{split}.csv",
                      art.predictions_frame(rows.ids[positions], rows.y[positions], prob, rows.classes))
    if spec.curve:
        dev = splits["dev"][0]
        art.learning_curve(out / art.CURVE, history, metric, result.best_epoch,
                           f"{Path(spec.data).name}, label '{saved.config['label']}': fine-tuned {'+'.join(live)} "
                           f"({saved.head_config().strategy}); epoch 0 = the run", rows.classes,
                           art.chance_level(metric, rows.y[dev], len(rows.classes)))
    metrics = {"initial_dev": loop["initial_dev"], "dev": splits["dev"][1], "test": splits["test"][1],
               "best_epoch": result.best_epoch, "steps": result.steps,
               "seconds_per_step": round(result.seconds / result.steps, 4) if result.steps else None,
               "train_seconds": round(result.seconds, 3), "stopped": result.stopped, "parity": loop["parity"],
               "calmed_columns": loop.get("calmed_columns", {}),
               "source_run": str(saved.path.resolve()), "seed": spec.config.seed}
    art.write_json(out / art.METRICS, metrics)
    return metrics


def precision_report(model, accel) -> dict[str, str]:
    """How each live encoder computed: its own low-precision weights, or float32 (under autocast or not)."""
    report = {}
    for feature, module in zip(model.live, model.encoders):
        dtype = next(p.dtype for p in module.parameters() if p.is_floating_point())
        if model.native[feature]:
            report[feature] = f"{str(dtype).removeprefix('torch.')} weights, float32 master copy"
        else:
            report[feature] = f"float32 weights, {accel.amp_dtype} autocast" if accel.amp_dtype else "float32"
    return report


def _weights_and_fingerprints(saved, model, modules: dict) -> tuple[dict, dict]:
    """model.safetensors of the fine-tuned run, and the fingerprints of the features its encoders make now."""
    from feat.cache import fingerprint_id

    tensors = {f"{HEAD}{k}": v.detach().to("cpu", copy=True) for k, v in model.head.state_dict().items()}
    tensors.update({k: v for k, v in saved.tensors.items() if k.startswith(f"{STATS}/")})
    for feature, stats in model.live_stats().items():
        tensors.update({f"{STATS}/{feature}/{k}": v for k, v in stats.items()})
    fingerprints = dict(saved.config["fingerprints"])
    for feature, module in modules.items():
        state = {k: v.detach().to("cpu", copy=True) for k, v in module.net.state_dict().items()}
        tensors.update({f"{ENCODERS}{feature}.{k}": v for k, v in state.items()})
        fingerprint = dict(saved.base_fingerprint(feature), weights=weights_identity(state))
        fingerprints[feature] = {"id": fingerprint_id(fingerprint), "fingerprint": fingerprint}
    return tensors, fingerprints


def describe(result: FinetuneResult) -> str:
    from feat.fuse.metrics import score

    m, metric = result.metrics, result.metric
    per_step = f"{m['seconds_per_step']:.2f} s/step" if m.get("seconds_per_step") else "no step"
    line = (f"{result.source.name}: dev {metric} {_fmt(m['initial_dev'][metric])} before any step (= the run's) -> "
            f"{_fmt(m['dev'][metric])} (best epoch {m['best_epoch']}), test {metric} {_fmt(m['test'][metric])}, "
            f"test accuracy {_fmt(m['test']['accuracy'])}; {m['steps']} steps, {per_step}; {m['stopped']} -> "
            f"{result.out}")
    if score(m["dev"], metric) < score(m["initial_dev"], metric):
        # The output keeps the best fine-tuned epoch; the run it started from is better on dev and stays so.
        line += f"\nfine-tuning did not beat the run on dev: {result.source} remains the better model"
    return line


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
