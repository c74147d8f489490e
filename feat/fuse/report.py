"""The report of an ablation: summary.csv, summary.md, three plots and the `best` file.

Configurations (feature set x strategy) are ranked by their mean DEV metric over seeds; test numbers are
shown beside it but never used to choose. Each configuration is compared with the best unimodal one (by dev)
on the same test items with a paired bootstrap (see stats.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feat.errors import FeatError
from feat.fuse import artifacts as art
from feat.fuse.data import FusionData
from feat.fuse.metrics import higher_is_better
from feat.fuse.stats import BOOTSTRAP_METRICS, bootstrap_ci, mean_std, paired_bootstrap

SUMMARY_CSV, SUMMARY_MD, BEST = "summary.csv", "summary.md", "best"
PLOTS = ("bars.png", "heatmap.png", "modality_weights.png")


@dataclass
class Summary:
    out: Path  # the ablation folder
    table: pd.DataFrame  # one row per configuration, ranked by dev
    metric: str  # dev selection metric
    test_metric: str  # metric of the test statistics (CI, paired test)
    best_run: str  # run folder of the winner, relative to `out`
    best_unimodal: str  # "features / strategy"
    markdown: str


def write_report(out: Path, results: pd.DataFrame, data: FusionData, metric: str) -> Summary:
    k = len(data.classes)
    test_metric = metric if metric in BOOTSTRAP_METRICS else ("f1" if k == 2 else "macro_f1")
    test_rows = data.rows("test")
    y = data.y[test_rows]
    preds = {run: _test_predictions(out / run, data.ids[test_rows], data.classes) for run in results["run"]}
    keys = list(dict.fromkeys(zip(results["features"], results["strategy"])))
    groups = {key: results[(results["features"] == key[0]) & (results["strategy"] == key[1])] for key in keys}

    table = []
    for (features, strategy), g in groups.items():
        dev_mean, dev_std = mean_std(g[f"dev_{metric}"].astype(float))
        test_mean, test_std = mean_std(g[f"test_{test_metric}"].astype(float))
        lo, hi = bootstrap_ci(y, np.stack([preds[r] for r in g["run"]]), k, test_metric)
        table.append({"features": features, "strategy": strategy, "n_inputs": int(g["n_inputs"].iloc[0]),
                      "runs": len(g), f"dev_{metric}_mean": dev_mean, f"dev_{metric}_std": dev_std,
                      "dev_loss_mean": float(g["dev_loss"].mean()),
                      f"test_{test_metric}_mean": test_mean, f"test_{test_metric}_std": test_std,
                      "test_ci_low": lo, "test_ci_high": hi, "best_epoch_mean": float(g["best_epoch"].mean()),
                      "seconds_mean": float(g["seconds"].mean())})
    table = pd.DataFrame(table)
    sign = -1 if higher_is_better(metric) else 1
    # dev metric first; ties (common once dev saturates) go to the lower mean dev loss, never to test
    order = np.lexsort((table["dev_loss_mean"].to_numpy(), sign * table[f"dev_{metric}_mean"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))

    unimodal = table[table["n_inputs"] == 1]
    reference = unimodal.iloc[0] if len(unimodal) else None
    deltas, pvalues = [], []
    for _, row in table.iterrows():
        if reference is None or (row["features"], row["strategy"]) == (reference["features"], reference["strategy"]):
            deltas.append(np.nan)
            pvalues.append(np.nan)
            continue
        a = np.stack([preds[r] for r in groups[(row["features"], row["strategy"])]["run"]])
        b = np.stack([preds[r] for r in groups[(reference["features"], reference["strategy"])]["run"]])
        delta, p = paired_bootstrap(y, a, b, k, test_metric)
        deltas.append(delta)
        pvalues.append(p)
    table["delta_vs_best_unimodal"] = deltas
    table["p_value"] = pvalues

    winner = groups[(table.iloc[0]["features"], table.iloc[0]["strategy"])]
    best_run = winner.iloc[np.argsort(sign * winner[f"dev_{metric}"].to_numpy(), kind="stable")[0]]["run"]
    best_unimodal = f"{reference['features']} / {reference['strategy']}" if reference is not None else ""
    art.write_csv(out / SUMMARY_CSV, table)
    markdown = _markdown(table, metric, test_metric, best_run, best_unimodal, len(y), data.classes)
    art.atomic_write(out / SUMMARY_MD, lambda p: p.write_text(markdown))
    art.atomic_write(out / BEST, lambda p: p.write_text(f"{best_run}\n"))
    _plots(out, table, results, metric, test_metric)
    return Summary(out, table, metric, test_metric, best_run, best_unimodal, markdown)


def _test_predictions(run_dir: Path, ids: np.ndarray, classes: list[str]) -> np.ndarray:
    frame = pd.read_csv(run_dir / "predictions_test.csv", dtype={"id": str, "true": str, "pred": str},
                        keep_default_na=False)
    if not np.array_equal(frame["id"].to_numpy(dtype=object), ids):
        raise FeatError(f"{run_dir}: its test items differ from the ablation's; delete the run folder to redo it")
    position = {c: i for i, c in enumerate(classes)}
    return np.array([position[c] for c in frame["pred"]], dtype=np.int64)


def _markdown(table: pd.DataFrame, metric: str, test_metric: str, best_run: str, best_unimodal: str, n_test: int,
              classes: list[str]) -> str:
    def fmt(v, digits=3):
        return "" if pd.isna(v) else f"{v:.{digits}f}"

    lines = [f"| rank | features | strategy | runs | dev {metric} | test {test_metric} | test 95% CI | "
             f"Δ test vs best unimodal | p |", "|---:|---|---|---:|---|---|---|---:|---:|"]
    for _, r in table.iterrows():
        p = "" if pd.isna(r["p_value"]) else ("<0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}")
        delta = "" if pd.isna(r["delta_vs_best_unimodal"]) else f"{r['delta_vs_best_unimodal']:+.3f}"
        lines.append(f"| {r['rank']} | {r['features']} | {r['strategy']} | {r['runs']} | "
                     f"{fmt(r[f'dev_{metric}_mean'])} ± {fmt(r[f'dev_{metric}_std'])} | "
                     f"{fmt(r[f'test_{test_metric}_mean'])} ± {fmt(r[f'test_{test_metric}_std'])} | "
                     f"[{fmt(r['test_ci_low'])}, {fmt(r['test_ci_high'])}] | "
                     f"{delta} | {p} |")
    positive = f"; positive class '{classes[1]}'" if len(classes) == 2 and test_metric == "f1" else ""
    notes = [
        f"Ranked by mean dev {metric} over seeds, ties by mean dev loss (test is never used to choose). "
        f"Mean ± std over seeds; the CI "
        f"is a 95% percentile bootstrap over the {n_test} test items of the seed-averaged test {test_metric}"
        f"{positive}.",
        f"Δ and p: paired bootstrap (same resampled test items, 2000 draws) against the best unimodal "
        f"configuration by dev, {best_unimodal}; two-sided p.",
        f"Winner by dev: {table.iloc[0]['features']} / {table.iloc[0]['strategy']}; its best run: `{best_run}`.",
    ]
    return "# Ablation summary\n\n" + "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _plots(out: Path, table: pd.DataFrame, results: pd.DataFrame, metric: str, test_metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = table[f"test_{test_metric}_mean"].to_numpy()
    labels = [f"{f} / {s}" for f, s in zip(table["features"], table["strategy"])]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(table) + 1.2), dpi=100)
    err = np.vstack([mean - table["test_ci_low"].to_numpy(), table["test_ci_high"].to_numpy() - mean])
    colours = ["tab:grey" if n == 1 else "tab:blue" for n in table["n_inputs"]]
    ax.barh(np.arange(len(table)), mean, xerr=np.maximum(err, 0), color=colours, capsize=3)
    ax.set_yticks(np.arange(len(table)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"test {test_metric}, 95% bootstrap CI (ranked by dev; grey: unimodal)", fontsize=8)
    fig.tight_layout()
    art.atomic_write(out / PLOTS[0], lambda p: fig.savefig(p, format="png"))
    plt.close(fig)

    grid = table.pivot_table(index="strategy", columns="features", values=f"test_{test_metric}_mean", sort=False)
    fig, ax = plt.subplots(figsize=(1.6 * grid.shape[1] + 2.5, 0.4 * grid.shape[0] + 1.5), dpi=100)
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(np.arange(grid.shape[1]), grid.columns, fontsize=8, rotation=20)
    ax.set_yticks(np.arange(grid.shape[0]), grid.index, fontsize=8)
    for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="white" if v < np.nanmean(grid.to_numpy(dtype=float)) else "black")
    fig.colorbar(image, ax=ax, label=f"test {test_metric} (mean over seeds)")
    fig.tight_layout()
    art.atomic_write(out / PLOTS[1], lambda p: fig.savefig(p, format="png"))
    plt.close(fig)

    columns = [c for c in results.columns if c.startswith("test_weight_")]
    weighted = results.dropna(subset=columns, how="all") if columns else results.iloc[0:0]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    if len(weighted):
        means = weighted.groupby(["features", "strategy"], sort=False)[columns].mean()
        means.columns = [c.removeprefix("test_weight_") for c in columns]
        means.index = [f"{f} / {s}" for f, s in means.index]
        means.plot.bar(ax=ax, rot=15, fontsize=7)
        ax.set_ylabel("mean weight on test items", fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no strategy with learned modality weights in this ablation", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    art.atomic_write(out / PLOTS[2], lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
