"""Stage 2, step 3 of 4: from the runs' saved predictions to the answer of "does the image help?".

Selection never sees test. A configuration's selection score is its mean validation metric over seeds and
partitions (the dev split, or the K x R CV folds); with `--tune`, its trial with the best mean validation score.
Its test score follows one fixed rule: per seed, the probabilities of its partition models are averaged (with
CV: the fold ensemble) and scored once on test; numbers are the mean over seeds, CIs bootstrap the test items.
The binary decision threshold of `f1_tuned` is chosen per seed on the validation predictions (with CV: the
pooled out-of-fold predictions).

The answer compares the best multimodal configuration with the best text-only AND the best image-only one
(each the best of its group by selection score), by a paired bootstrap on test items and, with CV, by the
Nadeau-Bengio corrected resampled t-test on the fold scores; `image_helps` needs p < 0.05 on test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from feat.errors import FeatError
from feat.fuse import stats
from feat.fuse.data import FusionData
from feat.fuse.artifacts import metric_label
from feat.fuse.metrics import best_threshold, higher_is_better
from feat.fuse.plan import AblateSpec

TEXT_ONLY, IMAGE_ONLY, MULTIMODAL, UNKNOWN = "text-only", "image-only", "multimodal", "unknown modality"
TEST_METRICS = ("auroc", "loss", "accuracy", "f1", "macro_f1")  # and f1_tuned for two classes
BOOTSTRAP = 2000


@dataclass
class Configuration:
    features: str  # "a+b"
    strategy: str
    group: str  # text-only | image-only | multimodal | unknown modality
    n_inputs: int
    trial: int  # the chosen hyperparameter trial
    runs: list[str]  # its run folders (relative to the ablation folder), seeds x partitions
    cells: np.ndarray  # (seeds, partitions) validation scores of the chosen trial
    val_loss: float  # mean validation loss (the tie-break)
    test_prob: np.ndarray  # (seeds, n_test, k) test probabilities of each seed's partition ensemble
    thresholds: list[float | None]  # per seed, chosen on validation predictions (binary tasks)
    test: dict  # metric -> (mean, std) over seeds
    hyperparameters: dict  # hp_* of the chosen trial
    best_epoch: float
    seconds: float  # mean training seconds per run
    resampled: np.ndarray = field(default=None, repr=False)  # (B,) bootstrap test scores, shared item draws

    @property
    def name(self) -> str:
        return f"{self.features} / {self.strategy}"

    @property
    def selection(self) -> float:
        return float(np.nanmean(self.cells))

    @property
    def selection_std(self) -> float:
        values = self.cells[np.isfinite(self.cells)]
        return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


@dataclass
class Evaluation:
    spec: AblateSpec
    data: FusionData
    metric: str  # selection metric, also the headline test metric
    results: pd.DataFrame  # one row per run
    configurations: list[Configuration]  # ranked by selection score
    y_test: np.ndarray
    answer: dict
    importance: pd.DataFrame | None
    robustness: pd.DataFrame | None
    winner_probability: dict[str, float]  # configuration name -> share of first places


def evaluate(spec: AblateSpec, results: pd.DataFrame, data: FusionData, metric: str) -> Evaluation:
    test_rows = data.rows("test")
    y = data.y[test_rows]
    modality = modalities(data)
    configs = [_configuration(spec, results, key, data, metric, modality) for key in
               dict.fromkeys(zip(results["features"], results["strategy"]))]
    sign = 1 if higher_is_better(metric) else -1
    configs.sort(key=lambda c: (-sign * c.selection if np.isfinite(c.selection) else np.inf, c.val_loss))
    draws = stats.resamples(len(y), BOOTSTRAP, 0)
    for c in configs:
        c.resampled = stats.score_resamples(metric, y, c.test_prob, draws)
    winner = _winner_probability(spec, configs, data, metric)
    importance, robustness = _attribution(spec, configs, data, metric, modality) if spec.attribution else (None, None)
    answer = _answer(spec, configs, results, data, metric, y, winner)
    return Evaluation(spec, data, metric, results, configs, y, answer, importance, robustness, winner)


def modalities(data: FusionData) -> dict[str, str]:
    """feature -> text | image | text+image | unknown, from the encoder named in its fingerprint."""
    from feat.extract.registry import ENCODERS, encoder_class

    out = {}
    for feature, fingerprint in data.fingerprints.items():
        stored = fingerprint["fingerprint"]
        encoder = stored.get("encoder")
        out[feature] = stored.get("modality") or (encoder_class(encoder).modality if encoder in ENCODERS
                                                  else "unknown")
    return out


def group_of(features: list[str], modality: dict[str, str]) -> str:
    kinds = {m for f in features for m in modality[f].split("+")}
    if "unknown" in kinds:
        return UNKNOWN
    return {frozenset({"text"}): TEXT_ONLY, frozenset({"image"}): IMAGE_ONLY}.get(frozenset(kinds), MULTIMODAL)


def _configuration(spec: AblateSpec, results: pd.DataFrame, key: tuple[str, str], data: FusionData, metric: str,
                   modality: dict[str, str]) -> Configuration:
    rows = results[(results["features"] == key[0]) & (results["strategy"] == key[1])]
    sign = 1 if higher_is_better(metric) else -1
    by_trial = rows.groupby("trial")[f"val_{metric}"].mean()
    trial = int((sign * by_trial).idxmax()) if by_trial.notna().any() else int(by_trial.index[0])
    chosen = rows[rows["trial"] == trial].sort_values(["seed", "repeat", "fold"])
    seeds = sorted(chosen["seed"].unique())
    cells = np.array([chosen[chosen["seed"] == s][f"val_{metric}"].to_numpy(dtype=float) for s in seeds])
    test_ids = data.ids[data.rows("test")]
    probs, thresholds = [], []
    for s in seeds:
        runs = chosen[chosen["seed"] == s]["run"].tolist()
        probs.append(np.mean([_probabilities(spec.out / r / "predictions_test.csv", test_ids, data.classes)
                              for r in runs], axis=0))
        thresholds.append(_pooled_threshold(spec, runs, data) if len(data.classes) == 2 else None)
    test_prob = np.stack(probs)
    y = data.y[data.rows("test")]
    per_seed = {m: [stats.observed(m, y, p) for p in test_prob] for m in TEST_METRICS}
    if len(data.classes) == 2:
        per_seed["f1_tuned"] = [stats.observed("f1", y, p, t) for p, t in zip(test_prob, thresholds)]
    test = {m: stats.mean_std(v) for m, v in per_seed.items()}
    hp = {c: chosen[c].iloc[0] for c in chosen.columns if c.startswith("hp_")}
    return Configuration(key[0], key[1], group_of(key[0].split("+"), modality), int(chosen["n_inputs"].iloc[0]),
                         trial, chosen["run"].tolist(), cells, float(chosen["val_loss"].mean()), test_prob,
                         thresholds, test, hp, float(chosen["best_epoch"].mean()), float(chosen["seconds"].mean()))


def _probabilities(path, ids: np.ndarray, classes: list[str]) -> np.ndarray:
    frame = _read_predictions(path)
    if not np.array_equal(frame["id"].to_numpy(dtype=object), ids):
        raise FeatError(f"{path}: its items differ from the ablation's test items; delete the run folder to redo it")
    return frame[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)


def _read_predictions(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "true": str, "pred": str}, keep_default_na=False)


def _pooled_threshold(spec: AblateSpec, runs: list[str], data: FusionData) -> float:
    """The F1 threshold of one seed's validation predictions pooled over its partitions (each train+dev row
    once per CV repeat, averaged over repeats; without CV, the dev rows)."""
    frames = pd.concat([_read_predictions(spec.out / r / "predictions_dev.csv") for r in runs])
    pooled = frames.groupby("id", sort=True).agg(true=("true", "first"), p=(f"p_{data.classes[1]}", "mean"))
    return best_threshold((pooled["true"] == data.classes[1]).to_numpy().astype(np.int64), pooled["p"].to_numpy())


def _winner_probability(spec: AblateSpec, configs: list[Configuration], data: FusionData,
                        metric: str) -> dict[str, float]:
    """Each configuration's share of first places when the selection is redone on resampled evidence: the
    (seed, fold) cells with CV; the dev items without (their validation predictions, seed-averaged)."""
    if spec.cv.folds:
        cells = np.stack([c.cells.ravel() for c in configs])
        shares = stats.winner_probability(cells, metric, BOOTSTRAP)
    else:
        dev_ids = data.ids[data.rows("dev")]
        y = data.y[data.rows("dev")]
        draws = stats.resamples(len(y), BOOTSTRAP, 1)
        resampled = np.stack([stats.score_resamples(metric, y, np.stack(
            [_probabilities(spec.out / r / "predictions_dev.csv", dev_ids, data.classes) for r in c.runs]), draws)
            for c in configs])
        shares = stats.first_place_rate(resampled, metric)
    return {c.name: float(s) for c, s in zip(configs, shares)}


def best_of(configs: list[Configuration], group: str) -> Configuration | None:
    return next((c for c in configs if c.group == group), None)


def compare(a: Configuration, b: Configuration, spec: AblateSpec, results: pd.DataFrame, metric: str,
            y: np.ndarray) -> dict:
    """a vs b on the same test items (paired bootstrap, delta = a - b) and, with CV, on the same folds."""
    delta = stats.observed(metric, y, a.test_prob) - stats.observed(metric, y, b.test_prob)
    out = stats.paired_summary(delta, a.resampled - b.resampled)
    if spec.cv.folds:
        folds = np.nanmean(a.cells, axis=0) - np.nanmean(b.cells, axis=0)  # J = K x R, seeds averaged
        n_val = results["val_n"].mean()
        n_train = results["val_n"].sum() / len(results) * (spec.cv.folds - 1)
        out["cv"] = stats.corrected_t_test(folds, n_train, n_val)
    return out


def describe(c: Configuration | None, metric: str) -> dict | None:
    if c is None:
        return None
    return {"features": c.features, "strategy": c.strategy, "group": c.group, "selection_score": c.selection,
            "selection_std": c.selection_std, "trial": c.trial,
            "test": {m: mean for m, (mean, _) in c.test.items()},
            "test_std_over_seeds": {m: std for m, (_, std) in c.test.items()},
            "hyperparameters": {k.removeprefix("hp_"): v for k, v in c.hyperparameters.items()}}


def _answer(spec: AblateSpec, configs: list[Configuration], results: pd.DataFrame, data: FusionData, metric: str,
            y: np.ndarray, winner: dict[str, float]) -> dict:
    best = configs[0]
    multimodal, text, image = (best_of(configs, g) for g in (MULTIMODAL, TEXT_ONLY, IMAGE_ONLY))
    vs = {}
    for key, other in (("vs_text_only", text), ("vs_image_only", image)):
        vs[key] = compare(multimodal, other, spec, results, metric, y) if multimodal and other else None
    helps = None
    if vs["vs_text_only"] is not None:
        oriented = vs["vs_text_only"]["delta"] * (1 if higher_is_better(metric) else -1)
        helps = bool(oriented > 0 and vs["vs_text_only"]["p"] < 0.05)
    pvalues = [v["p"] for v in vs.values() if v is not None]
    for v, adjusted in zip([v for v in vs.values() if v is not None], stats.holm(pvalues) if pvalues else []):
        v["p_holm"] = adjusted
    folds = (f"{spec.cv.folds}-fold CV over train+dev" + (f" x {spec.cv.repeats} repeats" if spec.cv.repeats > 1
             else "")) if spec.cv.folds else "the dev split"
    return {
        "question": "does the image help? best multimodal vs best text-only (and vs best image-only)",
        "metric": metric, "metric_name": metric_label(metric, data.classes),
        "positive_class": data.classes[1] if len(data.classes) == 2 else None, "classes": data.classes,
        "selection": f"mean validation {metric} over {spec.seeds} seed(s) x {folds}"
                     + (f", best of {spec.tune} hyperparameter trials" if spec.tune > 1 else ""),
        "test_rule": "per seed, the mean probabilities of its " + ("fold models" if spec.cv.folds else "model")
                     + ", scored once on test; mean over seeds",
        "n_test": int(len(y)), "n_configurations": len(configs),
        "best": describe(best, metric), "best_multimodal": describe(multimodal, metric),
        "best_text_only": describe(text, metric), "best_image_only": describe(image, metric),
        **vs,
        "image_helps": helps,
        "winner_probability": winner.get(best.name),
        "comparisons": "paired bootstrap over test items (2000 draws, two-sided p); with CV also the Nadeau-Bengio "
                       "corrected resampled t-test on fold scores; p_holm: Holm over the two comparisons",
    }


def _attribution(spec: AblateSpec, configs: list[Configuration], data: FusionData, metric: str,
                 modality: dict[str, str]):
    """Permutation / missing-input importance and the missing-modality curve of every multimodal configuration."""
    from feat.fuse.attribution import importance, robustness
    from feat.fuse.run import fitted_model

    rows = data.rows("test")
    y = data.y[rows]
    frames, curves = [], []
    for c in configs:
        if c.n_inputs < 2:
            continue
        models = [fitted_model(spec.out / r, data, rows) for r in c.runs]
        names = c.features.split("+")
        for frame, out in ((importance(models, y, metric, names), frames), (robustness(models, y, metric, names), curves)):
            frame.insert(0, "strategy", c.strategy)
            frame.insert(0, "features", c.features)
            frame.insert(2, "modality", frame["input"].map(modality))
            out.append(frame)
    if not frames:
        return None, None
    return pd.concat(frames, ignore_index=True), pd.concat(curves, ignore_index=True)
