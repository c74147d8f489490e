"""`feat study`: the preset's encoders extracted one by one (skips recorded), one ablation, one report.

The ablation is `feat ablate` itself (same heads, seeds, statistics, resumable run folders under
S/ablation), so a study re-run with a warm cache and finished runs only rewrites the report.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from feat.console import console
from feat.errors import FeatError, InputError
from feat.study import answers, figure, report
from feat.study.config import StudyConfig
from feat.study.costs import Cost, update_costs
from feat.study.extraction import Outcome, extract_all, skipped_pairs
from feat.study.grid import feature_sets, group_of
from feat.study.preset import IMAGE, JOINT, TEXT, Lineup, Preset, get_preset, lineup

REPORT, FIGURE, CONFIGURATIONS, ABLATION, ANSWER = ("report.md", "study.png", "configurations.csv", "ablation",
                                                    "answer.json")


@dataclass
class StudyResult:
    out: Path  # the study folder
    report: Path  # report.md
    figure: Path  # study.png
    table: pd.DataFrame  # every configuration ranked by dev, with its group
    best: dict[str, pd.Series | None]  # per group
    comparison: answers.Comparison  # best multimodal vs best text-only
    other_text: list[answers.Comparison]  # best multimodal vs every other text-only configuration
    costs: list[Cost]  # available encoders
    skipped: list[tuple[str, str, str]]  # (encoder or pair, role, reason)


def run_study(config: StudyConfig) -> StudyResult:
    preset = get_preset(config.preset)
    team = lineup(preset, config.encoders, config.models)
    pool_rows = _check_label(config)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    outcomes = extract_all(config, team.encoders)
    costs = update_costs(Path(config.out), outcomes, _device(config.device))
    available = {o.encoder.feature for o in outcomes if o.available}
    if not available:
        raise FeatError("no encoder of the study could be loaded: "
                        + "; ".join(f"{what}: {why}" for what, _, why in _skipped(team, outcomes)))
    summary = _ablate(config, preset, team, available, config.folds(pool_rows))
    return _write(config, preset, team, outcomes, [costs[e.feature] for e in team.encoders if e.feature in costs],
                  summary)


def _write(config: StudyConfig, preset: Preset, team: Lineup, outcomes: list[Outcome], costs: list[Cost],
           summary) -> StudyResult:
    """configurations.csv, study.png and report.md from the ablation's summary and the extraction outcomes."""
    from feat.fuse.artifacts import atomic_write, write_csv, write_json

    out = Path(config.out)
    results = pd.read_csv(out / ABLATION / "results.csv", dtype={"features": str, "strategy": str, "run": str})
    table = summary.table.drop(columns="group")  # the study's groups tell fusion of towers from joint encoders
    table.insert(1, "group", [group_of(f, team) for f in table["features"]])
    best = answers.best_per_group(table)
    skipped = _skipped(team, outcomes)
    missing = answers.missing_reasons(team, {o.encoder.feature for o in outcomes if o.available},
                                      {o.encoder.feature: o.reason for o in outcomes if not o.available},
                                      skipped_pairs(team.duals, outcomes))
    comparison = answers.compare(summary.evaluation, best)
    other_text = answers.compare_other_text(summary.evaluation, table, best)
    write_csv(out / CONFIGURATIONS, table)
    write_json(out / ANSWER, summary.answer)
    classes, chance = _chance(out / ABLATION / results["run"].iloc[0], summary.test_metric)
    figure.draw(out / FIGURE, table, summary.test_metric, summary.metric,
                f"{_dataset(config)}, label '{config.label}'", missing, classes, chance)
    text = report.render(report.ReportInput(
        _title(config), _setup(config, preset, team, _ran(team, outcomes), out, results), table, best, missing, comparison, other_text, costs,
        skipped,
        summary.metric, summary.test_metric, FIGURE, _command(config), summary.answer))
    atomic_write(out / REPORT, lambda p: p.write_text(text))
    return StudyResult(out, out / REPORT, out / FIGURE, table, best, comparison, other_text, costs, skipped)


def _chance(run: Path, metric: str) -> tuple[list[str], float | None]:
    """The classes, and the test metric of random guessing on the test labels (every run has the same)."""
    from feat.fuse import artifacts as art

    classes = art.read_json(run / art.CONFIG)["classes"]
    true = pd.read_csv(run / "predictions_test.csv", dtype={"true": str}, keep_default_na=False)["true"]
    position = {c: i for i, c in enumerate(classes)}
    return classes, art.chance_level(metric, true.map(position).to_numpy(), len(classes))


def _check_label(config: StudyConfig) -> int:
    """A misspelt label would otherwise surface after every encoder has run (minutes to hours). Returns the
    number of train+dev rows (what `--cv auto` decides on)."""
    from feat.data import load_table

    table = load_table(config.data, config.columns, config.image_root)
    if config.label not in table.frame.columns:
        extra = [c for c in table.frame.columns if c not in ("id", "split", "text", "image", "image_path",
                                                             "image_error")]
        raise InputError(f"label column '{config.label}' is not in {config.data} (columns: "
                         f"{', '.join(extra) or 'none'})")
    return int((table.frame["split"] != "test").sum())


def _device(spec: str) -> str:
    from feat.extract.device import select_device

    return select_device(spec)


def _skipped(team: Lineup, outcomes: list[Outcome]) -> list[tuple[str, str, str]]:
    pairs = {f: "+".join(p) for p in team.duals for f in p}
    rows = []
    for o in outcomes:
        if not o.available:
            role = {TEXT: "text tower", IMAGE: "image tower", JOINT: "joint encoder"}[o.encoder.role]
            role += f" (and its dual pair {pairs[o.encoder.feature]})" if o.encoder.feature in pairs else ""
            rows.append((o.encoder.feature, role, o.reason))
    return rows + [(pair, "dual-encoder pair (joint)", why) for pair, why in skipped_pairs(team.duals, outcomes)]


def _ablate(config: StudyConfig, preset: Preset, team: Lineup, available: set[str], folds: int):
    from feat.fuse.ablate import AblateSpec, run_ablation
    from feat.fuse.config import CVConfig

    sets = feature_sets(team, available)
    console.print(f"study: {len(sets)} feature sets x {config.seeds or preset.seeds} seeds"
                  f"{f' x {folds} folds' if folds else ''}, strategies "
                  f"{', '.join(config.strategies or preset.strategies)} on the multi-input ones", soft_wrap=True)
    return run_ablation(AblateSpec(config.cache_dir, sets, list(config.strategies or preset.strategies),
                                   config.seeds or preset.seeds, config.label, Path(config.out) / ABLATION,
                                   workers=config.workers, curves=False,
                                   cv=CVConfig(folds, config.cv_repeats, config.group_col), tune=config.tune,
                                   positive=config.positive))


def summary_selection(out: Path) -> str:
    from feat.fuse.report import read_answer

    return read_answer(out / ABLATION)["selection"]


def _dataset(config: StudyConfig) -> str:
    data = Path(config.data)
    return f"{data.parent.name}/{data.name}" if data.is_file() else data.name


def _title(config: StudyConfig) -> str:
    return f"{_dataset(config)} (label `{config.label}`)"


def _ran(team: Lineup, outcomes: list[Outcome]) -> list:
    available = {o.encoder.feature for o in outcomes if o.available}
    return [e for e in team.encoders if e.feature in available]


def _encoders(config: StudyConfig, preset: Preset, team: Lineup, ran: list) -> str:
    """The encoders that ran, by role: the report describes this run, not the preset's full list."""
    features = {e.feature for e in ran}

    def listed(role: str) -> str:
        return ", ".join(e.feature for e in ran if e.role == role) or "none"

    pairs = ", ".join("+".join(p) for p in team.duals if set(p) <= features) or "none"
    chosen = "the encoders given by --encoders" if config.encoders is not None else "the preset's encoders"
    skipped = len(team.encoders) - len(ran)
    return (f"Preset `{preset.name}` ({preset.note}), on {chosen} that ran: text towers {listed(TEXT)}; image "
            f"towers {listed(IMAGE)}; joint encoders {listed(JOINT)}; dual-encoder pairs {pairs}."
            + (f" {skipped} more could not run (see Skipped encoders)." if skipped else ""))


def _views(preset: Preset, ran: list) -> list[str]:
    """Which view of an encoder a feature set is, when the preset chose one, and why."""
    notes = []
    for e in ran:
        if e.options.svd_dim and e.encoder == "tfidf":
            why = preset.why.get(e.encoder)
            notes.append(f"TF-IDF enters as `{e.feature}`: the dense {e.options.svd_dim}-dim TruncatedSVD view of "
                         "the TF-IDF fitted on the train split, not the sparse rows that `feat extract -e tfidf` "
                         f"stores as `tfidf` (the two score differently){f', because {why}' if why else ''}.")
    return notes


def _setup(config: StudyConfig, preset: Preset, team: Lineup, ran: list, out: Path,
           results: pd.DataFrame) -> list[str]:
    from feat.fuse import artifacts as art
    from feat.fuse.data import describe_report

    run = art.read_json(out / ABLATION / results["run"].iloc[0] / art.CONFIG)
    train = run["train"]
    return [f"Data: `{config.data}`; {describe_report(run['data'])}; {len(run['classes'])} classes "
            f"({', '.join(run['classes'])}).",
            _encoders(config, preset, team, ran), *_views(preset, ran),
            f"Fusion strategies on every multi-input set: {', '.join(config.strategies or preset.strategies)}; "
            f"{config.seeds or preset.seeds} seeds per configuration; heads of `feat ablate` with its defaults "
            f"(lr {train['lr']}, batch {train['batch_size']}, at most {train['epochs']} epochs, early stopping on "
            f"validation {run['metric']} with patience {train['patience']}), on frozen features from the cache "
            f"`{config.cache_dir}`.",
            f"Selection: {summary_selection(out)}.",
            f"Full ablation (per-run folders, summary.md, plots): `{out / ABLATION}`."]


def _command(config: StudyConfig) -> str:
    parts = ["feat", "study", str(config.data), "--label", config.label, "--preset", config.preset,
             "--out", str(config.out)]
    if config.encoders is not None:
        parts += ["--encoders", ",".join(config.encoders)]
    for encoder, model in config.models.items():
        parts += ["--model", f"{encoder}={model}"]
    if config.seeds is not None:
        parts += ["--seeds", str(config.seeds)]
    if config.strategies is not None:
        parts += ["--strategies", ",".join(config.strategies)]
    if config.cache is not None:
        parts += ["--cache", str(config.cache)]
    if config.cv != "auto":
        parts += ["--cv", str(config.cv)]
    if config.tune:
        parts += ["--tune", str(config.tune)]
    return shlex.join(parts)
