"""Stage 2, step 4 of 4: the files of an ablation folder from its Evaluation.

summary.csv / summary.md (every configuration ranked by its selection score, never by test), answer.json
(the machine-readable answer), importance.csv / robustness.csv, the plots (bars, heatmap, modality weights,
importance, robustness) and `best`, a link to the winner's best run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feat.fuse import artifacts as art
from feat.fuse import stats
from feat.fuse.evaluate import IMAGE_ONLY, MULTIMODAL, TEXT_ONLY, Evaluation, best_of
from feat.fuse.artifacts import metric_label
from feat.fuse.metrics import higher_is_better

SUMMARY_CSV, SUMMARY_MD, ANSWER = "summary.csv", "summary.md", "answer.json"
IMPORTANCE, ROBUSTNESS = "importance", "robustness"
PLOTS = ("bars.png", "heatmap.png", "modality_weights.png", f"{IMPORTANCE}.png", f"{ROBUSTNESS}.png")
COLOURS = {TEXT_ONLY: "tab:orange", IMAGE_ONLY: "tab:green", MULTIMODAL: "tab:blue"}


@dataclass
class Summary:
    out: Path  # the ablation folder
    table: pd.DataFrame  # one row per configuration, ranked by selection score
    metric: str  # selection metric (also the headline test metric)
    best_run: str  # run folder of the winner, relative to `out`
    answer: dict  # as answer.json
    markdown: str
    evaluation: Evaluation  # every configuration's test probabilities and resampled scores

    @property
    def test_metric(self) -> str:
        return self.metric


def write_report(evaluation: Evaluation) -> Summary:
    out, metric = Path(evaluation.spec.out), evaluation.metric
    table = summary_table(evaluation)
    best_run = _best_run(evaluation)
    art.write_csv(out / SUMMARY_CSV, table)
    art.write_json(out / ANSWER, evaluation.answer)
    for name, frame in ((IMPORTANCE, evaluation.importance), (ROBUSTNESS, evaluation.robustness)):
        if frame is not None:
            art.write_csv(out / f"{name}.csv", frame)
    markdown = render_markdown(evaluation, table, best_run)
    art.atomic_write(out / SUMMARY_MD, lambda p: p.write_text(markdown))
    art.write_best(out, best_run)
    _plots(evaluation, table)
    return Summary(out, table, metric, best_run, evaluation.answer, markdown, evaluation)


def summary_table(evaluation: Evaluation) -> pd.DataFrame:
    metric, configs, y = evaluation.metric, evaluation.configurations, evaluation.y_test
    text, image = best_of(configs, TEXT_ONLY), best_of(configs, IMAGE_ONLY)
    rows = []
    for rank, c in enumerate(configs, 1):
        lo, hi = stats.percentile_interval(c.resampled)
        row = {"rank": rank, "features": c.features, "strategy": c.strategy, "group": c.group,
               "n_inputs": c.n_inputs, "runs": len(c.runs), "trial": c.trial,
               f"val_{metric}_mean": c.selection, f"val_{metric}_std": c.selection_std, "val_loss_mean": c.val_loss,
               "winner_probability": evaluation.winner_probability[c.name],
               f"test_{metric}_mean": c.test[metric][0], f"test_{metric}_std": c.test[metric][1],
               "test_ci_low": float(lo), "test_ci_high": float(hi)}
        row.update({f"test_{m}_mean": mean for m, (mean, _) in c.test.items() if m != metric})
        for name, other in (("text_only", text), ("image_only", image)):
            same = other is None or other is c
            paired = None if same else stats.paired_summary(
                stats.observed(metric, y, c.test_prob) - stats.observed(metric, y, other.test_prob),
                c.resampled - other.resampled)
            row[f"delta_vs_best_{name}"] = np.nan if same else paired["delta"]
            row[f"p_vs_best_{name}"] = np.nan if same else paired["p"]
        row.update(best_epoch_mean=c.best_epoch, seconds_mean=c.seconds, **c.hyperparameters)
        rows.append(row)
    return pd.DataFrame(rows)


def _best_run(evaluation: Evaluation) -> str:
    """The winner's run with the best validation score (its seed and fold)."""
    winner = evaluation.configurations[0]
    scores = winner.cells.ravel() * (1 if higher_is_better(evaluation.metric) else -1)
    return winner.runs[int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0]


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _p(value) -> str:
    return "" if value is None or pd.isna(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _signed(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:+.3f}"


def _spread(mean, std, runs: int) -> str:
    """mean ± std, without a spread that one value cannot have."""
    return _fmt(mean) if runs < 2 or pd.isna(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def render_markdown(evaluation: Evaluation, table: pd.DataFrame, best_run: str) -> str:
    a, metric, classes = evaluation.answer, evaluation.metric, evaluation.data.classes
    name = metric_label(metric, classes)
    label = evaluation.spec.label
    task = f"label `{label}`, {len(classes)} classes ({', '.join(classes)})"
    if len(classes) == 2:
        task += f", positive class `{classes[1]}`"
    lines = [f"# Ablation summary: {task}", "", "## Does the image help?", "", *_answer_lines(a, name), "",
             "## Every configuration", "",
             f"| rank | features | strategy | group | runs | selection: val {metric} | P(first) | test {metric} "
             f"[95% CI] | test f1 @0.5 | test f1 @tuned | Δ vs best text-only | p |",
             "|---:|---|---|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['rank']} | {r['features']} | {r['strategy']} | {r['group']} | {r['runs']} | "
                     f"{_spread(r[f'val_{metric}_mean'], r[f'val_{metric}_std'], r['runs'])} | "
                     f"{_fmt(r['winner_probability'], 2)} | "
                     f"{_fmt(r[f'test_{metric}_mean'])} [{_fmt(r['test_ci_low'])}, {_fmt(r['test_ci_high'])}] | "
                     f"{_fmt(r.get('test_f1_mean'))} | {_fmt(r.get('test_f1_tuned_mean'))} | "
                     f"{_signed(r['delta_vs_best_text_only'])} | "
                     f"{_p(r['p_vs_best_text_only'])} |")
    f1_class = f" of class `{classes[1]}`" if len(classes) == 2 else " (macro over classes)"
    notes = [
        f"Selection: {a['selection']}; configurations are ranked by it (ties by validation loss), never by test. "
        f"Spread: std over the {table['runs'].iloc[0]} runs (seeds x folds) of a configuration. P(first): the "
        "share of bootstrap resamples of that evidence in which the configuration ranks first.",
        f"Test: {a['test_rule']} (n = {a['n_test']} test items). CI: 95% percentile bootstrap over the test items. "
        f"f1{f1_class} at the argmax decision (p >= 0.5) and at the threshold chosen on validation predictions only.",
        f"Δ and p: {name} minus that of the best text-only configuration by selection score, paired bootstrap over "
        f"the same test items, two-sided; {len(table) - 1} such comparisons are printed, so one p < 0.05 among them "
        "is expected by chance: the answer above is the one comparison planned in advance.",
        f"Best run of the winner: `{best_run}` (linked as `best`).",
    ]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _answer_lines(a: dict, name: str) -> list[str]:
    multimodal, text, image = a["best_multimodal"], a["best_text_only"], a["best_image_only"]
    if multimodal is None or text is None:
        missing = "multimodal" if multimodal is None else "text-only"
        return [f"Not answerable here: the ablation has no {missing} configuration (image_helps: null)."]
    metric = a["metric"]

    def who(c):
        return f"{c['features']} / {c['strategy']} (test {name} {c['test'][metric]:.3f})"

    def versus(key):
        v = a[key]
        cv = f"; on the CV folds Δ {v['cv']['delta']:+.3f}, corrected t-test p {_p(v['cv']['p'])}" if "cv" in v else ""
        return (f"Δ {v['delta']:+.3f} [{_fmt(v['ci'][0])}, {_fmt(v['ci'][1])}], p {_p(v['p'])} "
                f"(Holm {_p(v.get('p_holm'))}){cv}")

    verdict = ("**Yes**: the best multimodal configuration beats the best text-only one on test (p < 0.05)."
               if a["image_helps"] else
               "**Not shown**: the best multimodal configuration does not beat the best text-only one significantly "
               "on test (p >= 0.05, or it is worse); the data do not say that the image helps.")
    lines = [verdict, "", f"- best multimodal: {who(multimodal)}", f"- best text-only: {who(text)}; multimodal "
             f"minus text-only: {versus('vs_text_only')}"]
    if image is not None:
        lines.append(f"- best image-only: {who(image)}; multimodal minus image-only: {versus('vs_image_only')}")
    lines.append(f"- overall winner by selection: {a['best']['features']} / {a['best']['strategy']}, first in "
                 f"{a['winner_probability']:.0%} of bootstrap resamples of the selection evidence")
    return lines


def _plots(evaluation: Evaluation, table: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feat.fuse.attribution import importance_figure, robustness_figure

    out, metric, classes = Path(evaluation.spec.out), evaluation.metric, evaluation.data.classes
    name = metric_label(metric, classes)
    about = f"{_dataset(evaluation.spec.cache)}, label '{evaluation.spec.label}'"
    _bars(plt, out / PLOTS[0], table, metric, name, about, len(evaluation.y_test), classes)
    _heatmap(plt, out / PLOTS[1], table, metric, name, about, classes)
    _weights(plt, out / PLOTS[2], evaluation.results, about)
    if evaluation.importance is not None:
        importance_figure(evaluation.importance, out / PLOTS[3],
                          f"{about}: drop of test {name} when one input is permuted or missing")
        robustness_figure(evaluation.robustness, out / PLOTS[4],
                          f"{about}: test {name} as test rows lose one input", _chance(metric, classes))


def _dataset(cache: Path) -> str:
    """The table the cache was extracted from, as `folder/file` (the cache folder when it does not say)."""
    from feat.cache import FeatureCache

    source = FeatureCache(cache).items_attrs().get("source")
    return "/".join(Path(source).parts[-2:]) if source else Path(cache).name


def _chance(metric: str, classes: list[str]) -> float | None:
    """The metric of a classifier that ignores its inputs (AUROC 0.5; log-loss of the uniform guess)."""
    return {"auroc": 0.5, "loss": float(np.log(len(classes)))}.get(metric)


def _save(plt, fig, path: Path) -> None:
    art.atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _bars(plt, path, table, metric, name, about, n_test, classes) -> None:
    mean = table[f"test_{metric}_mean"].to_numpy()
    err = np.vstack([mean - table["test_ci_low"].to_numpy(), table["test_ci_high"].to_numpy() - mean])
    fig, ax = plt.subplots(figsize=(9.5, 0.38 * len(table) + 1.8), dpi=150)
    ax.barh(np.arange(len(table)), mean, xerr=np.maximum(err, 0), capsize=3,
            color=[COLOURS.get(g, "tab:grey") for g in table["group"]])
    ax.set_yticks(np.arange(len(table)), [f"{f} / {s}" for f, s in zip(table["features"], table["strategy"])],
                  fontsize=8)
    ax.invert_yaxis()
    upper = max(1.0, float(np.nanmax(table["test_ci_high"]))) if metric != "loss" else None
    ax.set_xlim(0, upper)
    chance = _chance(metric, classes)
    if chance is not None:
        ax.axvline(chance, color="black", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    for group, colour in COLOURS.items():
        if (table["group"] == group).any():
            ax.barh([np.nan], [np.nan], color=colour, label=group)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    ax.set_xlabel(f"test {name} (n = {n_test}), mean over seeds, 95% bootstrap CI", fontsize=9)
    ax.set_title(f"{about}: configurations ranked by validation {name} (top first)", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)


def _heatmap(plt, path, table, metric, name, about, classes) -> None:
    grid = table.pivot_table(index="strategy", columns="features", values=f"val_{metric}_mean", sort=False)
    values = grid.to_numpy(dtype=float)
    low = _chance(metric, classes) if metric == "auroc" else 0.0
    fig, ax = plt.subplots(figsize=(1.8 * grid.shape[1] + 3, 0.45 * grid.shape[0] + 2), dpi=150)
    image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=None if metric == "loss" else low,
                      vmax=None if metric == "loss" else 1.0)
    ax.set_xticks(np.arange(grid.shape[1]), grid.columns, fontsize=8, rotation=20)
    ax.set_yticks(np.arange(grid.shape[0]), grid.index, fontsize=8)
    ax.set_xlabel("feature set (inputs joined by +)", fontsize=9)
    ax.set_ylabel("strategy (single: the unimodal baseline)", fontsize=9)
    for (i, j), v in np.ndenumerate(values):
        bright = np.isfinite(v) and image.norm(v) > 0.6  # viridis turns yellow: dark text stays readable
        ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                color="grey" if not np.isfinite(v) else ("black" if bright else "white"))
    fig.colorbar(image, ax=ax, label=f"validation {name}, mean over runs")
    ax.set_title(f"{about}: selection score of each strategy x feature set\n(n/a: that strategy does not take that "
                 "many inputs)", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)


def _weights(plt, path, results, about) -> None:
    columns = [c for c in results.columns if c.startswith("test_weight_")]
    weighted = results.dropna(subset=columns, how="all") if columns else results.iloc[0:0]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=150)
    if len(weighted):
        means = weighted.groupby(["features", "strategy"], sort=False)[columns].mean()
        means.columns = [c.removeprefix("test_weight_") for c in columns]
        means.index = [f"{f} / {s}" for f, s in means.index]
        means.plot.bar(ax=ax, rot=15, fontsize=8)
        n_inputs = max(len(f.split("+")) for f, _ in weighted.groupby(["features", "strategy"]).groups)
        ax.axhline(1 / n_inputs, color="black", linestyle="--", linewidth=1, label="equal weights")
        ax.set_ylabel("learned weight of each input\n(mean over test items and runs)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title(f"{about}: how much each head's learned mixing relies on each input\n(weights only show what a "
                     "head learned to mix; importance.png measures what the inputs are worth)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no strategy with learned modality weights in this ablation", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    _save(plt, fig, path)


def read_answer(folder: Path) -> dict:
    return json.loads((Path(folder) / ANSWER).read_text())
