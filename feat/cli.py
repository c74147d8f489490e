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
        from feat.errors import FeatError

        try:
            return command(*args, **kwargs)
        except FeatError as exc:
            from rich.markup import escape

            from feat.console import console

            # Escaped: a message quotes user data (ids, split values, paths) that may look like rich markup.
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


Data = Annotated[Path, typer.Argument(help="CSV/TSV/Parquet file with a split column, or a folder of "
                                           "train*/dev*/test* files.")]
CacheDir = Annotated[Path, typer.Option("--cache", "-c", help="Cache folder.")]


@app.command()
@_friendly_errors
def extract(
    data: Data,
    encoder: Annotated[list[str], typer.Option("--encoder", "-e", help="Encoder name; repeat for several. "
                                               "See `feat encoders`.")],
    cache: CacheDir = Path("feat-cache"),
    model: Annotated[Optional[str], typer.Option(help="Checkpoint id or local folder (one encoder only).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Feature-set name in the cache (default: encoder name).")] = None,
    pooling: Annotated[Optional[str], typer.Option(help="Text: cls | mean (| pooler); vision: pooler | cls | mean.")] = None,
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
    on_bad_image: Annotated[str, typer.Option(help="fail | skip (row invalid) | zero (zero vector, row valid); "
                                                   "bad rows are always listed in bad_rows.csv.")] = "skip",
    force: Annotated[bool, typer.Option(help="Re-encode a feature set whose fingerprint changed.")] = False,
    commit_every: Annotated[int, typer.Option(help="Rows per durable commit.")] = 1024,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another process using the cache.")] = 0,
):
    """Encode DATA once with frozen encoders into the HDF5 feature cache (resumable, incremental)."""
    from feat.console import console
    from feat.data import Columns
    from feat.extract.base import EncoderOptions
    from feat.extract.runner import ExtractConfig, extract as run_extract

    report = run_extract(ExtractConfig(
        data=data, cache=cache, encoders=encoder, columns=Columns(id_col, text_col, image_col, split_col),
        image_root=image_root, allow_outside_root=allow_outside_root,
        options=EncoderOptions(model=model, pooling=pooling, max_length=max_length, svd_dim=svd_dim),
        name=name, device=device, dtype=dtype, store_dtype=store_dtype, batch_size=batch_size,
        num_workers=num_workers, on_bad_image=on_bad_image, force=force, commit_every=commit_every,
        lock_timeout=wait))
    from rich.markup import escape

    # soft_wrap: one line per fact even in a narrow terminal or a log file, so that it can be grepped.
    for note in report.notes:
        console.print(f"[dim]{escape(note)}", soft_wrap=True)
    for line in report.encoders:
        console.print(escape(line.line()), soft_wrap=True)
    bad = f"; {report.bad_rows} bad row(s) listed in {report.cache / 'bad_rows.csv'}" if report.bad_rows else ""
    console.print(escape(f"cache {report.cache}: done in {report.seconds:.1f} s{bad}"), soft_wrap=True)


@app.command()
@_friendly_errors
def info(cache: Annotated[Path, typer.Argument(help="Cache folder.")]):
    """Print each feature set of a cache: rows, valid rows, dim, dtype, fingerprint, created, size."""
    from feat.cache.info import describe

    typer.echo(describe(cache))


@app.command()
def encoders():
    """List the registered encoders."""
    from feat.extract.registry import ENCODERS

    for name, target in ENCODERS.items():
        typer.echo(f"{name:10s} {target}")


@app.command()
@_friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data, the cache and the report.")] = Path("feat-demo"),
    rows: Annotated[int, typer.Option(help="Synthetic items to generate.")] = 600,
):
    """Run feat end to end on an embedded synthetic image + caption dataset (no download)."""
    from feat.demo import run_demo

    run_demo(out, rows)


if __name__ == "__main__":
    app()
