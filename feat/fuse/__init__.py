"""Stage 2: fusion heads trained on cached features (`feat fuse`, `feat evaluate`, `feat ablate`).

config.py      HeadConfig, TrainConfig
registry.py    strategy name -> head class (one file per strategy in this folder)
data.py        labels + feature matrices from the cache, standardisation, invalid rows
train.py       the training loop (AdamW, warm-up, clipping, early stopping on dev, deep-copied best state)
metrics.py     accuracy / F1 / AUROC / confusion matrix of one split
run.py         one run: train and write the run folder; re-evaluate a saved run
ablate.py      the grid of runs over strategies x feature sets x seeds, on both cores
stats.py       bootstrap CIs and paired tests over test items
report.py      summary.csv / summary.md / plots of an ablation
"""
