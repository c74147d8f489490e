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


def draw(path: Path, table: pd.DataFrame, test_metric: str, dev_metric: str, title: str,
         missing: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feat.fuse.artifacts import atomic_write

    rows = _layout(table)
    fig, ax = plt.subplots(figsize=(7.5, 0.27 * len(rows) + 1.4), dpi=200)
    mean_col = f"test_{test_metric}_mean"
    for y, (kind, group, row) in enumerate(rows):
        if kind == "header":
            ax.text(0.0, y, group, transform=ax.get_yaxis_transform(), ha="left", va="center",
                    fontsize=8, fontweight="bold", color=COLOURS[group])
        elif kind == "missing":
            ax.text(0.01, y, _short(missing[group].short()), transform=ax.get_yaxis_transform(), ha="left",
                    va="center", fontsize=6.5, color="grey", style="italic")
        else:
            mean = row[mean_col]
            err = [[max(mean - row["test_ci_low"], 0)], [max(row["test_ci_high"] - mean, 0)]]
            ax.barh(y, mean, xerr=err, color=COLOURS[group], alpha=1.0 if kind == "best" else 0.45,
                    capsize=2, height=0.7, error_kw={"linewidth": 0.8})
    best_text = table[table["group"] == TEXT_ONLY]
    if len(best_text):
        ax.axvline(best_text.iloc[0][mean_col], color="black", linestyle="--", linewidth=0.8,
                   label=f"best text-only ({best_text.iloc[0]['features']})")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_yticks(range(len(rows)), [_label(kind, row) for kind, _, row in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # top to bottom, with room for the last line's text
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"test {test_metric} (mean over seeds, 95% bootstrap CI over test items); "
                  f"* = best of its group by validation {dev_metric}", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=9, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _layout(table: pd.DataFrame) -> list[tuple[str, str, pd.Series | None]]:
    """(kind, group, row) per line of the plot: a header per group, then its configurations best first."""
    rows = []
    for group in GROUPS:
        members = table[table["group"] == group]
        rows.append(("header", group, None))
        if not len(members):
            rows.append(("missing", group, None))
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

