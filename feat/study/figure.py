"""The study's figure: test metric with its 95% CI per configuration, grouped text / image / fusion / joint.

Within a group the configurations keep the selection ranking (best first, and drawn solid: it is the group's
answer); the dashed line is the best text-only configuration's test mean, the bar every multimodal
configuration has to clear for the image to have helped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from feat.study.grid import GROUPS, TEXT_ONLY

COLOURS = dict(zip(GROUPS, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))


def draw(path: Path, table: pd.DataFrame, test_metric: str, dev_metric: str, title: str, missing: dict,
         classes: list[str] | None = None, chance: float | None = None) -> None:
    """`title` names the dataset and label; `classes` name a binary metric's class; `chance`: the test metric of
    random guessing (a dotted grey line). Groups without a configuration are named below the axis, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feat.fuse.artifacts import atomic_write, metric_label

    rows = _layout(table)
    empty = [g for g in GROUPS if not (table["group"] == g).any()]
    fig, ax = plt.subplots(figsize=(9, 0.34 * len(rows) + 2.2), dpi=150)
    mean_col = f"test_{test_metric}_mean"
    label = metric_label(test_metric, classes)
    for y, (kind, group, row) in enumerate(rows):
        if kind == "header":
            ax.text(0.0, y, group, transform=ax.get_yaxis_transform(), ha="left", va="center",
                    fontsize=10, fontweight="bold", color=COLOURS[group])
        else:
            mean = row[mean_col]
            err = [[max(mean - row["test_ci_low"], 0)], [max(row["test_ci_high"] - mean, 0)]]
            ax.barh(y, mean, xerr=err, color=COLOURS[group], alpha=1.0 if kind == "best" else 0.45,
                    capsize=2, height=0.7, error_kw={"linewidth": 0.8})
    best_text = table[table["group"] == TEXT_ONLY]
    if len(best_text):
        ax.axvline(best_text.iloc[0][mean_col], color="black", linestyle="--", linewidth=0.8,
                   label=f"best text-only ({best_text.iloc[0]['features']})")
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle=":", linewidth=1.2, label=f"chance ({chance:.3f})")
    if len(best_text) or chance is not None:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False, ncol=2)
    ax.set_yticks(range(len(rows)), [_label(kind, row) for kind, _, row in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # top to bottom
    ax.tick_params(axis="y", length=0)
    if test_metric != "loss":
        ax.set_xlim(0, 1)  # the metric's whole range: close configurations look close
    seeds = sorted(set(table["runs"].astype(int))) if "runs" in table else []
    over = f"{seeds[0]} run{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1 else "runs"
    ax.set_xlabel(f"test {label} (mean over seeds, {over} per configuration, 95% bootstrap CI over test items); "
                  f"* = best of its group by validation {metric_label(dev_metric, classes)}", fontsize=9)
    ax.set_ylabel("configuration (features / fusion)", fontsize=9)
    ax.tick_params(axis="x", labelsize=9)
    ax.set_title(f"Unimodal vs multimodal: {title}, test {label}", fontsize=11, loc="left", pad=22)
    ax.spines[["top", "right"]].set_visible(False)
    if empty:
        fig.text(0.01, 0.005, _short("Not drawn, no configuration: " + "; ".join(
            f"{g} ({missing[g].short()})" if g in missing else g for g in empty), 170),
            fontsize=8, color="grey", style="italic", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if empty else 0, 1, 1))
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _layout(table: pd.DataFrame) -> list[tuple[str, str, pd.Series | None]]:
    """(kind, group, row) per line of the plot: a header per group, then its configurations best first."""
    rows = []
    for group in GROUPS:
        members = table[table["group"] == group]
        if not len(members):
            continue  # an empty group is named under the axis, not drawn as a blank block
        rows.append(("header", group, None))
        for i, (_, row) in enumerate(members.iterrows()):
            rows.append(("best" if i == 0 else "other", group, row))
    return rows


def _label(kind: str, row: pd.Series | None) -> str:
    if row is None:
        return ""
    strategy = "" if row["strategy"] == "single" else f" / {row['strategy']}"
    return f"{'* ' if kind == 'best' else ''}{row['features']}{strategy}"


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

