"""The two config dataclasses of Stage 2: what the head is, and how it is trained.

Both are stored verbatim in a run's config.json, so every field must be JSON-serialisable and a run can be
rebuilt from that file alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

METRICS = ("f1", "macro_f1", "accuracy", "auroc", "loss")
MISSING = ("drop", "zero")
CLASS_WEIGHTS = ("none", "balanced")
PRECISION = {"fp32": "highest", "bf16": "medium"}  # -> torch.set_float32_matmul_precision


@dataclass(frozen=True)
class HeadConfig:
    strategy: str = "proj_concat"  # a name from feat.fuse.registry.STRATEGIES
    common_dim: int = 768  # every input is projected to this width (Identity when it already has it)
    dropout: float = 0.1  # dropout of the reference classifier and of the fusion layers
    depth: int = 1  # intermediate: layers per input branch
    width: int = 256  # intermediate: units per branch layer
    logreg_c: float = 1.0  # logreg: inverse L2 strength of scikit-learn's LogisticRegression


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # the reference uses 16 end to end; a head on frozen features trains as well with 128, 8x fewer steps
    lr: float = 1e-3  # the reference's 2e-5 is for fine-tuning encoders; a head on frozen features wants ~1e-3
    lr_weights: float = 0.05  # modality-mixing scalars (weighted_mean, late_learned, the gate's bias): at lr 1e-3 a scalar moves ~0.06 in a whole run
    weight_decay: float = 1e-4  # AdamW decoupled weight decay, as the reference
    warmup: float = 0.1  # fraction of all steps with a linear warm-up, then linear decay to 0
    clip: float = 1.0  # max global grad norm
    patience: int = 5  # epochs without a dev improvement before stopping
    metric: str = "auto"  # selection and early stopping; auto = auroc (threshold-free, ranks most stably); or one of METRICS
    class_weights: str = "none"  # none | balanced (n / (k * n_c), from the train labels)
    standardize: bool = True  # z-score each input with statistics of the train rows only
    missing: str = "drop"  # invalid cache rows: drop them, or zero them and add a missing-indicator column
    seed: int = 0  # seeds init, dropout and batch order; same seed + same data -> identical metrics
    precision: str = "fp32"  # fp32 | bf16: float32 matmuls done in bf16 where the CPU has AMX/AVX512-BF16


@dataclass(frozen=True)
class CVConfig:
    folds: int = 0  # K of a stratified K-fold over train+dev (test untouched); 0 = the data's own train/dev split
    repeats: int = 1  # R reshuffles of the K folds: J = K x R validation scores per configuration and seed
    group_col: str | None = None  # rows sharing a value of this column stay in one fold (near duplicates, users)
    seed: int = 0  # the fold shuffle; fixed apart from the run seed so that every configuration sees the same folds

    @property
    def partitions(self) -> int:
        """Train/validation partitions per configuration and seed (1: the data's own split)."""
        return self.folds * self.repeats if self.folds else 1


def from_dict(cls, data: dict):
    """Rebuild a config from config.json, ignoring keys a newer feat may have added."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def to_dict(config) -> dict:
    return asdict(config)
