"""The `feat` command line: a thin typer shell, one library call per command.

Heavy modules (torch, transformers, h5py) are imported inside the commands so that `feat --help` is instant.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="feat: encode a multimodal dataset once, then compare fusion heads in seconds.")


def _friendly_errors(command):
    """FeatError -> one red line on stderr and its exit code (2 for input errors)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from feat.errors import FeatError, StorageError

        try:
            try:
                return command(*args, **kwargs)
            except OSError as exc:  # a folder feat creates on a full or read-only disk (mkdir, open)
                error = StorageError.of(exc.filename or "a file", exc)
                if error is None:
                    raise
                raise error from exc
        except FeatError as exc:
            from rich.markup import escape

            from feat.console import console

            # Escaped: a message quotes user data (ids, split values, paths) that may look like rich markup.
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _list(values: list[str] | None) -> list[str]:
    """Every list option: repeated, comma-separated or both (`-e a -e b` = `-e a,b`); order kept, repeats dropped."""
    return list(dict.fromkeys(v.strip() for value in values or [] for v in value.split(",") if v.strip()))


Data = Annotated[Path, typer.Argument(help="CSV/TSV/Parquet file with a split column, or a folder of "
                                           "train*/dev*/test* files.")]
CacheDir = Annotated[Path, typer.Option("--cache", "-c", help="Cache folder.")]


@app.command()
@_friendly_errors
def extract(
    data: Data,
    encoder: Annotated[list[str], typer.Option("--encoder", "--encoders", "-e", help="Encoder names, "
                                               "comma-separated or repeated. See `feat encoders`.")],
    cache: CacheDir = Path("feat-cache"),
    model: Annotated[Optional[str], typer.Option(help="Checkpoint id or local folder (one encoder only).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Feature-set name in the cache (default: encoder name; "
                                                    "tfidf-svdN with --svd-dim N).")] = None,
    pooling: Annotated[Optional[str], typer.Option(help="Text: cls | mean (| pooler); vision: pooler | cls | mean; flava: cls | pooler.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Text truncation in tokens.")] = None,
    svd_dim: Annotated[Optional[int], typer.Option(help="TF-IDF: dense SVD view of this size.")] = None,
    id_col: Annotated[str, typer.Option(help="Id column; when absent, ids are derived from the content.")] = "id",
    text_col: Annotated[str, typer.Option(help="Text column.")] = "text",
    image_col: Annotated[str, typer.Option(help="Image path column.")] = "image",
    split_col: Annotated[str, typer.Option(help="Split column (train/dev/test; val = dev).")] = "split",
    image_root: Annotated[Optional[Path], typer.Option(help="Image paths are relative to this folder "
                                                            "(default: the data file's folder).")] = None,
    allow_outside_root: Annotated[bool, typer.Option(help="Accept image paths outside the image root.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="Compute dtype: auto | float32 | bfloat16 | float16.")] = "auto",
    store_dtype: Annotated[str, typer.Option(help="Stored vectors: float32 | float16.")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = 32,
    num_workers: Annotated[int, typer.Option(help="Image decoding worker processes.")] = 0,
    threads: Annotated[int, typer.Option(help="Torch threads for forward passes (0: one per core). Use fewer "
                                              "when processes share the machine, e.g. 1 per shard.")] = 0,
    on_bad_image: Annotated[str, typer.Option(help="fail | skip (row invalid) | zero (zero vector, row valid); "
                                                   "bad rows are always listed in bad_rows.csv.")] = "skip",
    force: Annotated[bool, typer.Option(help="Re-encode a feature set whose fingerprint changed.")] = False,
    commit_every: Annotated[int, typer.Option(help="Rows per durable commit.")] = 1024,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another process using the cache.")] = 0,
    shard: Annotated[Optional[str], typer.Option(help="I/N: encode only shard I (0-based) of N into its own "
                                                      "parts, so that N processes share one cache; then "
                                                      "`feat merge`.")] = None,
    backend: Annotated[str, typer.Option(help="local | ray: the forward passes as a Ray Data pipeline "
                                              "(pip install 'feat\\[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="--backend ray: an existing cluster (auto, "
                                                            "ray://HEAD:10001); default: a local Ray.")] = None,
    ray_actors: Annotated[int, typer.Option(help="--backend ray: encoder actors, one model load each (0: one "
                                                 "per GPU, else sized from the CPUs).")] = 0,
):
    """Encode DATA once with frozen encoders into the HDF5 feature cache (resumable, incremental)."""
    from feat.cache.shard import Shard
    from feat.console import console
    from feat.data import Columns
    from feat.extract.base import EncoderOptions
    from feat.extract.runner import ExtractConfig, extract as run_extract

    report = run_extract(ExtractConfig(
        data=data, cache=cache, encoders=_list(encoder), columns=Columns(id_col, text_col, image_col, split_col),
        image_root=image_root, allow_outside_root=allow_outside_root,
        options=EncoderOptions(model=model, pooling=pooling, max_length=max_length, svd_dim=svd_dim),
        name=name, device=device, dtype=dtype, store_dtype=store_dtype, batch_size=batch_size,
        num_workers=num_workers, threads=threads, on_bad_image=on_bad_image, force=force,
        commit_every=commit_every, lock_timeout=wait, shard=Shard.parse(shard) if shard else None,
        backend=backend, ray_address=ray_address, ray_actors=ray_actors))
    from rich.markup import escape

    # soft_wrap: one line per fact even in a narrow terminal or a log file, so that it can be grepped.
    for note in report.notes:
        console.print(f"[dim]{escape(note)}", soft_wrap=True)
    for line in report.encoders:
        console.print(escape(line.line()), soft_wrap=True)
    bad = f"; {report.bad_rows} bad row(s) listed in {report.cache / 'bad_rows.csv'}" if report.bad_rows else ""
    console.print(escape(f"cache {report.cache}: done in {report.seconds:.1f} s{bad}"), soft_wrap=True)
    for feature, item, reason in report.bad_examples:
        console.print(escape(f"  bad row {item} ({feature}): {reason}"), soft_wrap=True)
    if report.bad_rows > len(report.bad_examples):
        console.print(f"  ... and {report.bad_rows - len(report.bad_examples)} more in bad_rows.csv", soft_wrap=True)


@app.command()
@_friendly_errors
def merge(
    cache: Annotated[Path, typer.Argument(help="Cache folder that `feat extract --shard I/N` runs filled.")],
    wait: Annotated[float, typer.Option(help="Seconds to wait for running shards to finish.")] = 0,
):
    """Join the shards of a sharded extraction into the usual feature files (refused until all are complete)."""
    from rich.markup import escape

    from feat.cache.merge import merge as run_merge
    from feat.console import console

    report = run_merge(cache, wait)
    for merged in report.merged:
        console.print(escape(f"{merged.name}: {merged.rows} rows from {merged.shards} shards, {merged.invalid} "
                             "invalid"), soft_wrap=True)
    bad = f"; {report.bad_rows} bad row(s) listed in {report.cache / 'bad_rows.csv'}" if report.bad_rows else ""
    console.print(escape(f"cache {report.cache}: merged in {report.seconds:.1f} s{bad}"), soft_wrap=True)


@app.command()
@_friendly_errors
def info(cache: Annotated[Path, typer.Argument(help="Cache folder.")]):
    """Print each feature set of a cache: rows, valid rows, dim, dtype, fingerprint, created, size."""
    from feat.cache.info import describe

    typer.echo(describe(cache))


@app.command()
@_friendly_errors
def verify(
    cache: Annotated[Path, typer.Argument(help="Cache folder.")],
    runs: Annotated[Optional[Path], typer.Option(help="Also check the run and ablation folders under DIR "
                                                      "(config.json, model.safetensors, metrics.json).")] = None,
):
    """Read every file of a cache against its checksums; one line per problem. Exit 0 clean, 1 damaged."""
    from rich.markup import escape

    from feat.cache.verify import verify as run_verify
    from feat.console import console

    report = run_verify(cache, runs)
    for problem in report.problems:
        colour = "red" if problem.damaged else "yellow"
        console.print(f"[{colour}]{escape(problem.line())}", soft_wrap=True)
    console.print(escape(report.summary()), soft_wrap=True)
    if report.damaged:
        raise typer.Exit(1)


@app.command()
def encoders():
    """List the registered encoders."""
    from feat.extract.registry import ENCODERS

    for name, target in ENCODERS.items():
        typer.echo(f"{name:10s} {target}")


# ----- Stage 2: fusion heads on cached features -------------------------------------------------------
Label = Annotated[str, typer.Option(help="Label column of the data (stored in the cache's items).")]
Metric = Annotated[str, typer.Option(help="Validation metric for early stopping and for choosing configurations "
                                          "and trials: auto (= auroc: threshold-free, it ranks configurations "
                                          "most stably; macro one-vs-rest for more classes) | f1 (of the positive "
                                          "class for 2 classes, else macro) | macro_f1 | accuracy | auroc | loss.")]
Cv = Annotated[int, typer.Option("--cv", help="K: stratified K-fold cross-validation over train+dev (test "
                                             "untouched; the same folds for every configuration); 0 = the "
                                             "data's own train/dev split.")]
CvRepeats = Annotated[int, typer.Option(help="With --cv: repeat the K folds R times with other shuffles.")]
GroupCol = Annotated[Optional[str], typer.Option(help="With --cv: rows sharing this column's value stay in one fold "
                                                      "(near duplicates, same user, same image).")]
Tune = Annotated[int, typer.Option(help="N hyperparameter trials per configuration (lr, weight decay, dropout, "
                                        "common dim, width, patience; the same N for every configuration), chosen "
                                        "on validation data only; 0 = the given values.")]
LrWeights = Annotated[float, typer.Option(help="Learning rate of the modality-mixing scalars (weighted_mean, "
                                               "late_learned, the gate's bias).")]
PositiveLabel = Annotated[Optional[str], typer.Option(help="Binary labels: the positive class of f1, AUROC and the "
                                                           "tuned threshold (default: the second sorted label).")]
Patience = Annotated[int, typer.Option(help="Epochs without dev improvement before stopping.")]
Epochs = Annotated[int, typer.Option(help="Maximum epochs.")]
BatchSize = Annotated[int, typer.Option(help="Train batch size.")]
Lr = Annotated[float, typer.Option(help="AdamW peak learning rate.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
Warmup = Annotated[float, typer.Option(help="Fraction of steps with linear warm-up (then linear decay).")]
CommonDim = Annotated[int, typer.Option(help="Width every input is projected to (Identity when equal).")]
Dropout = Annotated[float, typer.Option(help="Dropout of the classifier and fusion layers.")]
Depth = Annotated[int, typer.Option(help="intermediate: layers per input branch.")]
Width = Annotated[int, typer.Option(help="intermediate: units per branch layer.")]
ClassWeights = Annotated[str, typer.Option(help="none | balanced (loss weights n / (k * n_c) from train).")]
Missing = Annotated[str, typer.Option(help="Rows the cache marks invalid: drop | zero (zero-filled + a "
                                           "missing-indicator column per input). Counts are reported.")]
Standardize = Annotated[bool, typer.Option(help="Z-score inputs with train-only statistics.")]
Precision = Annotated[str, typer.Option(help="fp32 | bf16 (float32 matmuls computed in bf16 on CPUs with "
                                             "AMX / AVX512-BF16: ~1.5x faster training, slightly other numbers).")]


def _configs(options: dict):
    """HeadConfig, TrainConfig and CVConfig from a command's options: each config field is the option of that
    name (CVConfig's `folds` is --cv, `repeats` --cv-repeats)."""
    from dataclasses import fields

    from feat.fuse.config import CVConfig, HeadConfig, TrainConfig

    options = {**options, "folds": options.get("cv", 0), "repeats": options.get("cv_repeats", 1)}
    return tuple(cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})
                 for cls in (HeadConfig, TrainConfig, CVConfig))


def _strategy_help() -> str:
    from feat.fuse.registry import strategy_help

    return f"Fusion strategy. {strategy_help()}."


Strategies = Annotated[list[str], typer.Option("--strategies", "--strategy", help="Strategies for the "
                                               "multi-input sets: all | reference (the five reference heads) | "
                                               "names, comma-separated or repeated. Unimodal baselines run "
                                               "automatically.")]


@app.command()
@_friendly_errors
def fuse(
    features: Annotated[list[str], typer.Option(help="Feature sets of the cache, one head input each; "
                                                    "comma-separated or repeated.")],
    cache: CacheDir = Path("feat-cache"),
    strategy: Annotated[str, typer.Option("--strategy", "--strategies", help=_strategy_help())] = "proj_concat",
    label: Label = "label",
    seed: Annotated[int, typer.Option(help="Seed of init, dropout and batch order.")] = 0,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("feat-run"),
    metric: Metric = "auto", patience: Patience = 5, epochs: Epochs = 15, batch_size: BatchSize = 128,
    lr: Lr = 1e-3, weight_decay: WeightDecay = 1e-4, warmup: Warmup = 0.1, common_dim: CommonDim = 768,
    dropout: Dropout = 0.1, depth: Depth = 1, width: Width = 256, class_weights: ClassWeights = "none",
    missing: Missing = "drop", standardize: Standardize = True, precision: Precision = "fp32",
    lr_weights: LrWeights = 0.05, positive_label: PositiveLabel = None, cv: Cv = 0, cv_repeats: CvRepeats = 1,
    group_col: GroupCol = None,
):
    """Train one fusion head on cached features; writes config, weights, metrics, predictions and a plot.
    With --cv K: one run per fold (OUT/runs/...), validation mean over folds, test scored by the fold ensemble."""
    from feat.console import console
    from feat.errors import InputError
    from feat.fuse.ablate import describe_run, fuse as run_fuse
    from feat.fuse.run import FuseSpec

    if len(_list([strategy])) != 1:
        raise InputError(f"feat fuse trains one head: give one strategy, not '{strategy}' (feat ablate compares "
                         "several)")
    features = _list(features)
    head, train, folds = _configs(locals())
    console.print(describe_run(run_fuse(FuseSpec(cache, features, label, out, head, train, positive=positive_label,
                                                 cv=folds))), soft_wrap=True, markup=False)


@app.command()
@_friendly_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `feat fuse`, an ablation's run, or an ablation "
                                             "folder (its best run).")],
    split: Annotated[str, typer.Option(help="train | dev | test (val, validation = dev)")] = "dev",
    cache: Annotated[Optional[Path], typer.Option("--cache", "-c", help="Cache folder (default: the run's).")] = None,
):
    """Recompute a run's metrics from its saved head and the cache; they must equal metrics.json."""
    import json

    from feat.console import console
    from feat.data import SPLIT_ALIASES
    from feat.errors import FeatError
    from feat.fuse.artifacts import resolve_run
    from feat.fuse.run import evaluate_run

    split = SPLIT_ALIASES.get(split.strip().lower(), split)
    run = resolve_run(run)
    result = evaluate_run(run, split, cache)
    typer.echo(json.dumps(result.metrics, indent=2))
    if result.saved is None:
        console.print(f"(metrics.json has no '{split}' entry to compare with)")
    elif result.identical:
        console.print(f"[green]identical to {run / 'metrics.json'} ({split})")
    else:
        raise FeatError(f"recomputed {split} metrics differ from {run / 'metrics.json'}")


@app.command()
@_friendly_errors
def ablate(
    features: Annotated[list[str], typer.Option(help="A feature set (comma-separated for several inputs); "
                                                    "repeat, e.g. --features minilm --features minilm,effnet.")],
    cache: CacheDir = Path("feat-cache"),
    strategies: Strategies = ["all"],
    seeds: Annotated[int, typer.Option(help="Seeds per configuration (0 .. N-1).")] = 5,
    label: Label = "label",
    out: Annotated[Path, typer.Option(help="Ablation folder (re-running resumes it).")] = Path("feat-ablation"),
    workers: Annotated[int, typer.Option(help="Worker processes (one torch thread each).")] = 2,
    curves: Annotated[Optional[bool], typer.Option("--curves/--no-curves", help="Write a learning_curve.png per "
                                                   "run (default: yes without --cv; with --cv, K x more runs, no).")] = None,
    metric: Metric = "auto", patience: Patience = 5, epochs: Epochs = 15, batch_size: BatchSize = 128,
    lr: Lr = 1e-3, weight_decay: WeightDecay = 1e-4, warmup: Warmup = 0.1, common_dim: CommonDim = 768,
    dropout: Dropout = 0.1, depth: Depth = 1, width: Width = 256, class_weights: ClassWeights = "none",
    missing: Missing = "drop", standardize: Standardize = True, precision: Precision = "fp32",
    lr_weights: LrWeights = 0.05, positive_label: PositiveLabel = None, cv: Cv = 0, cv_repeats: CvRepeats = 1,
    group_col: GroupCol = None, tune: Tune = 0,
    attribution: Annotated[bool, typer.Option(help="Permutation and missing-input importance of every multimodal "
                                                   "configuration on test, and missing-modality robustness curves.")] = True,
):
    """Every strategy x feature set x seed (x fold x trial) plus unimodal baselines; answer.json (does the image
    help?), summary with CIs and paired tests, attribution, plots."""
    from feat.console import console
    from feat.fuse.ablate import AblateSpec, run_ablation

    head, train, folds = _configs(locals())  # strategy and seed are set per run
    summary = run_ablation(AblateSpec(cache, [_list([f]) for f in features], _list(strategies), seeds, label,
                                      out, head, train, workers, curves, folds, tune, positive_label,
                                      attribution=attribution))
    typer.echo(summary.markdown)
    console.print(f"report: {summary.out / 'summary.md'}; best run: {summary.out / summary.best_run}")


def _model_overrides(values: list[str]) -> dict[str, str]:
    from feat.errors import InputError

    # Comma-separated like every list option, unless a piece has no '=': then the comma is part of a path.
    values = [piece for v in values for piece in (v.split(",") if all("=" in p for p in v.split(",")) else [v])]
    pairs = [v.split("=", 1) for v in values]
    bad = [v for v, p in zip(values, pairs) if len(p) != 2 or not p[0].strip() or not p[1].strip()]
    if bad:
        raise InputError(f"--model takes ENCODER=ID_OR_FOLDER, got '{bad[0]}'")
    return {name.strip(): model.strip() for name, model in pairs}


@app.command()
@_friendly_errors
def study(
    data: Data,
    label: Label = "label",
    out: Annotated[Path, typer.Option(help="Study folder: report.md, study.png, costs.json, ablation/, cache/.")] = Path("feat-study"),
    preset: Annotated[str, typer.Option(help="Study preset; `reference`: the unimodal-vs-multimodal study "
                                             "(text towers, image towers, their pairs, joint encoders).")] = "reference",
    encoders: Annotated[Optional[list[str]], typer.Option("--encoders", "--encoder", "-e", help="Encoders "
                                                         "replacing the preset's list, comma-separated or "
                                                         "repeated, e.g. minilm,tfidf,effnet.")] = None,
    model: Annotated[list[str], typer.Option(help="ENCODER=ID_OR_FOLDER: another checkpoint or a local folder "
                                                 "for one encoder; comma-separated or repeated for several.")] = [],
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per configuration (default: the preset's).")] = None,
    strategies: Annotated[Optional[list[str]], typer.Option("--strategies", "--strategy", help="Fusion "
                                                                 "strategies for the pairs, comma-separated or "
                                                                 "repeated (default: the preset's).")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", "-c", help="Feature cache (default: OUT/cache).")] = None,
    id_col: Annotated[str, typer.Option(help="Id column.")] = "id",
    text_col: Annotated[str, typer.Option(help="Text column.")] = "text",
    image_col: Annotated[str, typer.Option(help="Image path column.")] = "image",
    split_col: Annotated[str, typer.Option(help="Split column.")] = "split",
    image_root: Annotated[Optional[Path], typer.Option(help="Image paths are relative to this folder.")] = None,
    device: Annotated[str, typer.Option(help="Extraction device: auto | cpu | cuda | cuda:N")] = "auto",
    num_workers: Annotated[int, typer.Option(help="Image decoding worker processes during extraction.")] = 0,
    workers: Annotated[int, typer.Option(help="Ablation worker processes.")] = 2,
    force: Annotated[bool, typer.Option(help="Re-encode a feature set whose fingerprint changed.")] = False,
    cv: Annotated[str, typer.Option("--cv", help="Folds over train+dev: auto (5 when train+dev has fewer than "
                                                 "10,000 rows, else the data's own split) | K | 0.")] = "auto",
    cv_repeats: CvRepeats = 1, group_col: GroupCol = None, tune: Tune = 0, positive_label: PositiveLabel = None,
):
    """Unimodal vs multimodal on every available encoder: extract, ablate, report.md and answer.json with the
    answer to "does the image help?", costs, figure."""
    from feat.console import console
    from feat.data import Columns
    from feat.study import StudyConfig, run_study

    result = run_study(StudyConfig(
        data=data, label=label, out=out, preset=preset, models=_model_overrides(model), seeds=seeds,
        encoders=_list(encoders) or None, strategies=_list(strategies) or None, cache=cache,
        columns=Columns(id_col, text_col, image_col, split_col), image_root=image_root, device=device,
        num_workers=num_workers, workers=workers, force=force, cv=cv, cv_repeats=cv_repeats, group_col=group_col,
        tune=tune, positive=positive_label))
    typer.echo(result.report.read_text())
    console.print(f"report: {result.report}; figure: {result.figure}", soft_wrap=True)


@app.command()
@_friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data, the cache and the report.")] = Path("feat-demo"),
    rows: Annotated[int, typer.Option(help="Synthetic items to generate.")] = 600,
):
    """Run feat end to end on an embedded synthetic image + caption dataset (no download)."""
    from feat.demo import run_demo

    run_demo(out, rows)


# ----- Stage 3: fine-tuning and prediction ------------------------------------------------------------
@app.command()
@_friendly_errors
def finetune(
    run: Annotated[Path, typer.Argument(help="A `feat fuse` run folder, or an ablation folder (its best run by "
                                             "dev; --top K for its K best configurations).")],
    data: Annotated[Path, typer.Option(help="The table the run's cache was extracted from (raw texts and "
                                            "images; they must be the ones the cached features were made of).")],
    out: Annotated[Path, typer.Option(help="Output folder, laid out like a run (loadable by `feat predict`).")] = Path("feat-finetune"),
    top: Annotated[int, typer.Option(help="Ablation folder: fine-tune its K best configurations, each into OUT/<run>.")] = 1,
    cache: Annotated[Optional[Path], typer.Option("--cache", "-c", help="The run's cache (default: the one its "
                                                                       "config.json records).")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Image root (default: the one the cache was "
                                                            "extracted with).")] = None,
    freeze: Annotated[str, typer.Option(help="none | text | vision | joint: keep those encoders as cached (their "
                                             "features are read from the cache).")] = "none",
    unfreeze_last: Annotated[int, typer.Option(help="Train only the last N blocks of each encoder's layer stack "
                                                    "and the layers after it; -1 = every layer.")] = -1,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on dev).")] = 15,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Batches per optimizer step.")] = 1,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimizer steps (0 = no limit).")] = 0,
    lr_encoder: Annotated[float, typer.Option(help="AdamW peak learning rate of the encoders.")] = 2e-5,
    lr_head: Annotated[float, typer.Option(help="AdamW peak learning rate of the head.")] = 1e-3,
    weight_decay: WeightDecay = 1e-4, warmup: Warmup = 0.1,
    clip: Annotated[float, typer.Option(help="Max global gradient norm.")] = 1.0,
    patience: Patience = 5,
    seed: Annotated[int, typer.Option(help="Seed of dropout and batch order.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    amp: Annotated[str, typer.Option(help="auto (bf16 on GPUs that have it, else fp16 with loss scaling; float32 "
                                          "on CPU) | off | bf16 | fp16.")] = "auto",
    grad_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass (less memory).")] = False,
    num_workers: Annotated[int, typer.Option(help="Image decoding worker processes.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Optimizer steps between mid-epoch checkpoints "
                                                       "(0 = at each epoch end only).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's last checkpoint after a crash.")] = False,
    curve: Annotated[bool, typer.Option(help="Write learning_curve.png.")] = True,
):
    """Fine-tune a run's encoders end to end from its trained head; parity with the run is checked first."""
    import os

    # Before torch starts its OpenMP threads. Spinning workers wait for each other whenever another process takes
    # a core: a MiniLM + EfficientNet step (batch 8, 2 cores) took 9-29 s with spinning waits against 2-6 s with
    # sleeping ones while other jobs loaded the machine; idle, sleeping waits cost ~35% (0.85 -> 1.15 s). The
    # 10x pathology is the worse risk; OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from rich.markup import escape

    from feat.console import console
    from feat.finetune.config import FinetuneConfig
    from feat.finetune.run import FinetuneSpec, describe, run_finetune
    from feat.fuse.artifacts import resolve_run

    run = resolve_run(run, ablation=False)  # an ablation folder itself: --top picks among its runs

    config = FinetuneConfig(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, max_steps=max_steps,
                            lr_encoder=lr_encoder, lr_head=lr_head, weight_decay=weight_decay, warmup=warmup,
                            clip=clip, patience=patience, freeze=freeze, unfreeze_last=unfreeze_last, seed=seed,
                            amp=amp, grad_checkpointing=grad_checkpointing, checkpoint_every=checkpoint_every)
    results = run_finetune(FinetuneSpec(run, data, out, config, top, cache, image_root, device, num_workers, resume,
                                        curve))
    for result in results:
        console.print(escape(describe(result)), soft_wrap=True)


@app.command()
@_friendly_errors
def predict(
    run: Annotated[Path, typer.Argument(help="A `feat fuse` or `feat finetune` run folder, or an ablation folder "
                                             "(its best run).")],
    data: Annotated[Path, typer.Argument(help="Rows to label (CSV/TSV/Parquet); no split or label column needed.")],
    out: Annotated[Path, typer.Option(help="Predictions CSV: id, pred, p_<class> per class, reason.")] = Path("predictions.csv"),
    cache: Annotated[Optional[Path], typer.Option("--cache", "-c", help="Feature cache of the new rows "
                                                                       "(default: RUN/predict-cache); a cache "
                                                                       "holding a dataset is only read: its rows "
                                                                       "are reused.")] = None,
    id_col: Annotated[Optional[str], typer.Option(help="Id column (default: as in the run's cache).")] = None,
    text_col: Annotated[Optional[str], typer.Option(help="Text column (default: as in the run's cache).")] = None,
    image_col: Annotated[Optional[str], typer.Option(help="Image column (default: as in the run's cache).")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Image paths are relative to this folder "
                                                            "(default: the data file's folder).")] = None,
    allow_outside_root: Annotated[bool, typer.Option(help="Accept image paths outside the image root.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = 32,
    num_workers: Annotated[int, typer.Option(help="Image decoding worker processes.")] = 0,
    on_bad_image: Annotated[str, typer.Option(help="fail | skip (no prediction, reason given) | zero (zero "
                                                   "vector); as `feat extract`.")] = "skip",
):
    """Label new rows with a trained run: its encoders (through a feature cache), standardisation and head."""
    from rich.markup import escape

    from feat.console import console
    from feat.fuse.artifacts import resolve_run
    from feat.predict import PredictSpec, predict as run_predict

    report = run_predict(PredictSpec(resolve_run(run), data, out, cache,
                                     {"id": id_col, "text": text_col, "image": image_col}, image_root,
                                     allow_outside_root, device, batch_size, num_workers, on_bad_image))
    for extraction in report.extract:
        for note in extraction.notes:
            console.print(f"[dim]{escape(note)}", soft_wrap=True)
        for line in extraction.encoders:
            console.print(escape(line.line()), soft_wrap=True)
    console.print(escape(f"{report.predicted} of {report.rows} rows predicted -> {report.out} (features in "
                         f"{report.cache})"), soft_wrap=True)
    for item, reason in report.unpredicted[:5]:
        console.print(escape(f"  no prediction for {item}: {reason}"), soft_wrap=True)
    if len(report.unpredicted) > 5:
        console.print(f"  ... and {len(report.unpredicted) - 5} more (column 'reason' of {report.out})", soft_wrap=True)


if __name__ == "__main__":
    app()
