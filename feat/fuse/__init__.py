"""Stage 2: fusion heads trained on cached features (`feat fuse`, `feat evaluate`, `feat ablate`).

The flow is one-way: plan -> train -> evaluate -> report.

config.py      HeadConfig, TrainConfig, CVConfig
registry.py    strategy name -> head class (one file per strategy in this folder)
data.py        labels + feature matrices from the cache, standardisation, invalid rows, CV partition views
folds.py       stratified (grouped) K-fold assignment over train+dev
tune.py        the hyperparameter trials of --tune (the same for every configuration)
plan.py        1. plan: the runs of an ablation (configurations x trials x seeds x folds), each a FuseSpec
train.py       2. train: the training loop (AdamW, warm-up, clipping, early stopping, deep-copied best state)
run.py         one run: train and write the run folder; re-evaluate a saved run
ablate.py      runs the plan on both cores, then evaluate and report
evaluate.py    3. evaluate: selection, fold ensembles on test, comparisons, winner probability -> the answer
attribution.py permutation / missing-input importance and missing-modality robustness of saved heads
metrics.py     accuracy / F1 / AUROC / log-loss / thresholds of one split
stats.py       bootstrap CIs, paired tests, the corrected resampled t-test, winner probability, Holm
report.py      4. report: summary.csv / summary.md / answer.json / plots of an ablation
"""
