"""feat: multimodal classification as a two-stage feature cache.

Stage 1 (`feat extract`) encodes a dataset once with frozen encoders into an HDF5 cache; stage 2
(`feat fuse`, `feat ablate`) trains light fusion heads on the cached features. Stage 3 (`feat finetune`)
trains a run's encoders end to end from its head; `feat predict` labels new rows with any trained run.
"""

__version__ = "0.1.0"
