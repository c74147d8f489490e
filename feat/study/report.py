"""report.md of a study: the answers first, then the evidence (every configuration, costs, skipped encoders).

Markdown tables a reader can paste into a paper; every number comes from the ablation's summary, the paired
test or the cost measurements, and says how it was obtained.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from feat.study.answers import Comparison, close_call, name
from feat.study.costs import Cost
from feat.study.grid import GROUPS

QUESTIONS = {"text-only": "best text-only", "image-only": "best image-only",
             "fusion of towers": "best fusion of towers", "joint encoder": "best joint encoder"}


@dataclass
class ReportInput:
    title: str  # the dataset's name
    setup: list[str]  # sentences on data, task, selection and grid
    table: pd.DataFrame  # the ablation summary ranked by dev, with a `group` column
    best: dict[str, pd.Series | None]  # per group
    missing: dict  # per group: answers.Missing, why it may be empty
    comparison: Comparison  # best multimodal against best text-only
    other_text: list[Comparison]  # best multimodal against every other text-only configuration
    costs: list[Cost]  # available encoders, extraction order
    skipped: list[tuple[str, str, str]]  # (encoder or pair, role, reason)
    dev_metric: str
    test_metric: str
    figure: str  # file name of the figure, beside report.md
    command: str  # how to reproduce
    answer: dict  # the ablation's answer.json


def render(r: ReportInput) -> str:
    parts = [f"# Unimodal vs multimodal: {r.title}", " ".join(r.setup), _answers(r), _image_helps(r),
             _configurations(r), _costs(r.costs), _skipped(r.skipped),
             f"## Figure\n\n![test {r.test_metric} per configuration]({r.figure})", f"Reproduce: `{r.command}`"]
    return "\n\n".join(parts) + "\n"


def _num(value, digits: int = 3) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    """Error messages quote paths and ids: a '|' or a line break would cut the table row."""
    return " ".join(text.replace("|", "/").split())


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _scores(row: pd.Series, r: ReportInput) -> str:
    d, t = f"val_{r.dev_metric}", f"test_{r.test_metric}"
    return (f"{_num(row[f'{d}_mean'])} ± {_num(row[f'{d}_std'])} | {_num(row[f'{t}_mean'])} ± "
            f"{_num(row[f'{t}_std'])} | [{_num(row['test_ci_low'])}, {_num(row['test_ci_high'])}]")


def _answers(r: ReportInput) -> str:
    lines = ["## Answers", "", f"| question | configuration | runs | validation {r.dev_metric} | test {r.test_metric} | "
             "test 95% CI |", "|---|---|---:|---|---|---|"]
    for group in GROUPS:
        row = r.best[group]
        if row is None:
            lines.append(f"| {QUESTIONS[group]} | {_cell(r.missing[group].short())} | | | | |")
        else:
            lines.append(f"| {QUESTIONS[group]} | {name(row)} | {row['runs']} | {_scores(row, r)} |")
    # The table holds the short reason; a line below only when the full one says more (the skip reasons).
    empty = [f"- {QUESTIONS[g]}: {_cell(r.missing[g].full())}" for g in GROUPS
             if r.best[g] is None and r.missing[g].full() != r.missing[g].short()]
    lines += [""] + empty + ([""] if empty else [])
    lines += [f"Each answer is the group's best configuration by its selection score ({r.answer['selection']}; "
              "ties: lower validation loss); test is reported, never used to choose. ± is the standard deviation "
              f"over runs; test: {r.answer['test_rule']}; the CI is a 95% percentile bootstrap over the test items."]
    return "\n".join(lines)


def _image_helps(r: ReportInput) -> str:
    c, a = r.comparison, r.answer
    if c.reason or a["vs_text_only"] is None:
        return f"## Does the image help?\n\nNo paired test: {c.reason or 'no multimodal or no text-only configuration'}."
    v = a["vs_text_only"]
    answer = "**yes**" if a["image_helps"] else "**not shown** (the data do not say that it helps)"
    lines = [f"## Does the image help?\n\nAnswer: {answer}. Best multimodal configuration by selection score, "
             f"**{c.multimodal}**, against the best text-only, **{c.text_only}**: Δ test {a['metric_name']} = "
             f"{v['delta']:+.3f} [95% CI {_num(v['ci'][0])}, {_num(v['ci'][1])}], p = {_p(v['p'])} ({_verdict(c)})"
             + (f"; on the CV folds Δ {v['cv']['delta']:+.3f}, Nadeau-Bengio corrected t-test p = "
                f"{_p(v['cv']['p'])}" if 'cv' in v else "")
             + f". Paired bootstrap: 2,000 resamples of the {c.n_test} test items, the same items for both; "
             "two-sided p. `answer.json` holds these numbers."]
    if a["vs_image_only"] is not None:
        w = a["vs_image_only"]
        lines.append(f"Against the best image-only configuration, {a['best_image_only']['features']} / "
                     f"{a['best_image_only']['strategy']}: Δ {w['delta']:+.3f}, p = {_p(w['p'])}.")
    lines.append(f"The overall winner by selection score ranks first in {a['winner_probability']:.0%} of bootstrap "
                 "resamples of the selection evidence.")
    close = close_call(r.table, "text-only", r.dev_metric)
    if r.other_text:
        others = "; ".join(f"{o.text_only}: Δ {o.delta:+.3f}, p = {_p(o.p_value)} ({_verdict(o)})"
                           for o in r.other_text)
        lines.append(f"{close + ' ' if close else ''}Against the other text-only configurations: {others}.")
    return "\n\n".join(lines)


def _verdict(c: Comparison) -> str:
    if c.p_value >= 0.05:
        return "not significant at the 5% level"
    return "significant at the 5% level: the image " + ("helps" if c.delta > 0 else "hurts")


def _configurations(r: ReportInput) -> str:
    lines = ["## All configurations", "", f"| group | rank | features | strategy | runs | validation {r.dev_metric} | "
             f"test {r.test_metric} | test 95% CI | train s / run |", "|---|---:|---|---|---:|---|---|---|---:|"]
    for group in GROUPS:
        for _, row in r.table[r.table["group"] == group].iterrows():
            lines.append(f"| {group} | {row['rank']} | {row['features']} | {row['strategy']} | {row['runs']} | "
                         f"{_scores(row, r)} | {_num(row['seconds_mean'], 1)} |")
    return "\n".join(lines)


def _costs(costs: list[Cost]) -> str:
    lines = ["## Extraction cost", "", "| encoder | feature set | model | dim | rows encoded | seconds | "
             "s / 1,000 items | measured |", "|---|---|---|---:|---:|---:|---:|---|"]
    for c in costs:
        per = _num(c.per_1000, 1) or "n/a"
        lines.append(f"| {c.encoder} | {c.feature} | {c.model} | {c.dim} | {c.encoded if c.encoded else 0} | "
                     f"{_num(c.seconds, 1) if c.encoded else ''} | {per} | {_when(c)} |")
    machine = next((c for c in costs if c.encoded), None)
    where = (f" Machine: {machine.device}, {machine.cpus} logical CPUs, {machine.torch_threads} torch threads."
             if machine else "")
    lines += ["", "Seconds: wall time of the encoder's extract step (model load, image decoding, forward passes, "
              "cache writes) in the run that encoded its rows; per 1,000 items = seconds / rows encoded x 1,000, "
              "so a small run carries the model load over few items. Rows reused from the cache do not count; "
              f"a run that reused every row keeps the earlier measurement of the same fingerprint.{where} "
              "The load average is the machine's 1-minute load when the encoder finished: above the CPU count, "
              "other processes shared the cores and the figure overstates the cost."]
    return "\n".join(lines)


def _when(c: Cost) -> str:
    if not c.encoded:
        return "not measured: every row was reused from the cache, and the study folder holds no earlier measurement"
    load = f"load average {_num(c.load_average, 1)}" if c.load_average is not None else "load average unknown"
    return f"{'this run' if c.fresh else 'an earlier run'}, {c.measured} ({load})"


def _skipped(skipped: list[tuple[str, str, str]]) -> str:
    if not skipped:
        return "## Skipped encoders\n\nNone: every encoder of the study loaded."
    lines = ["## Skipped encoders", "", "| encoder | role | reason |", "|---|---|---|"]
    lines += [f"| {what} | {role} | {_cell(reason)} |" for what, role, reason in skipped]
    return "\n".join(lines)
