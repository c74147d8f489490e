"""One model from a run: its encoders, trainable, in front of its head with the trained weights.

Each live input goes encoder -> (stored precision) -> the run's train-only standardisation -> the run's
missing-value rule, exactly as the cached features went into the head; inputs that stay fixed (TF-IDF,
encoders frozen by --freeze) are read from the cache, standardised as in the run. So before any step the
model computes what the run computed, up to float rounding (checked in parity.py).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from feat.errors import InputError
from feat.finetune.data import Batch, RowSet, require_decoded

LOW = (torch.bfloat16, torch.float16)


class FinetuneModel(nn.Module):
    def __init__(self, features: list[str], live: dict[str, nn.Module], head: nn.Module, rows: RowSet,
                 stats: dict | None, store_dtypes: dict[str, str], missing: str):
        super().__init__()
        self.features = list(features)
        self.live = [f for f in features if f in live]
        self.encoders = nn.ModuleList(live[f] for f in self.live)  # a list: feature names need not be identifiers
        self.head = head
        self.rows = rows
        self.missing = missing
        self.half = {f: store_dtypes[f] == "float16" for f in self.live}
        self.standardize = stats is not None
        for i, f in enumerate(self.live if stats is not None else []):
            self.register_buffer(f"mean{i}", torch.from_numpy(stats[f]["mean"]))
            self.register_buffer(f"scale{i}", torch.from_numpy(stats[f]["scale"]))
        self.fixed = {f: _prepared(rows, f, stats, missing) for f in features if f not in live}
        self.autocast = contextlib.nullcontext  # the trainer sets its Accelerator's autocast
        # An encoder loaded in its cache's low compute dtype runs in it natively (never under autocast, whose
        # float32 norms and softmax are another arithmetic than the cache's); its float32 master copies are made
        # by `encoder_groups`.
        self.native = {f: any(p.dtype in LOW for p in m.parameters()) for f, m in live.items()}
        self.masters: dict[str, nn.Parameter] = {}
        self._low: list[tuple[nn.Parameter, nn.Parameter]] = []

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def forward(self, batch: Batch, vectors: dict | None = None) -> torch.Tensor:
        """Logits of the batch's rows; `vectors` (if given) receives each live input's raw vectors of the rows
        it encoded, as (positions, array), for the parity diagnosis."""
        xs = []
        for f in self.features:
            if f in self.fixed:
                xs.append(_take(self.fixed[f], batch.positions).to(self.device))
            else:
                xs.append(self._live_input(self.live.index(f), f, batch, vectors))
        return self.head(xs)

    def calm_constant_columns(self) -> dict[str, int]:
        """Scale 1 for live columns whose train std is float noise (runs made before `feat fuse` recognised
        them): a fine-tuning step changes such a column by far more than its std, and dividing by that std
        turned a step into head inputs in the hundreds (MVSA, MiniLM: train loss 0.03 -> 10-100 within ten
        steps). Done after the parity check, which must use the run's exact statistics."""
        from feat.fuse.data import constant_columns

        calmed = {}
        with torch.no_grad():
            for i, feature in enumerate(self.live if self.standardize else []):
                scale = getattr(self, f"scale{i}")
                mask = torch.from_numpy(constant_columns(scale.cpu().numpy())).to(scale.device) & (scale != 1)
                scale[mask] = 1.0
                calmed[feature] = int(mask.sum())
        return {f: n for f, n in calmed.items() if n}

    def live_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """The standardisation the live inputs go through now (what a fine-tuned run stores)."""
        if not self.standardize:
            return {}
        return {f: {"mean": getattr(self, f"mean{i}").detach().cpu().clone(),
                    "scale": getattr(self, f"scale{i}").detach().cpu().clone()} for i, f in enumerate(self.live)}

    def _live_input(self, i: int, feature: str, batch: Batch, vectors: dict | None) -> torch.Tensor:
        encoder = self.encoders[i]
        modality = encoder.modality
        valid = torch.from_numpy(self.rows.valid[feature][batch.positions]).to(self.device)
        if "image" in modality:
            require_decoded(feature, self.rows, batch)
            decoded = batch.decoded[feature]  # a host array: no device sync
            texts = [t for t, ok in zip(batch.texts, decoded) if ok] if "text" in modality else None
            pixels = batch.pixels[feature]
        else:
            decoded, texts, pixels = None, batch.texts, None
        if pixels is None and decoded is not None:  # no image of this batch decoded (all rows invalid here)
            x = torch.zeros(len(batch.positions), self.rows.cached[feature].shape[1], device=self.device)
        else:
            with contextlib.nullcontext() if self.native[feature] else self.autocast():
                x = encoder(encoder.collate(texts, pixels)).float()
            if self.half[feature]:
                x = x.half().float()  # the head was trained on features stored as float16
            if vectors is not None:
                kept = batch.positions if decoded is None else batch.positions[decoded]
                vectors.setdefault(feature, []).append((kept, x.detach().cpu().numpy()))
            if decoded is not None and not decoded.all():
                # Row indices, not a boolean mask: masked assignment on a GPU waits for the mask's count.
                rows = torch.from_numpy(np.flatnonzero(decoded)).to(self.device, non_blocking=True)
                x = x.new_zeros(len(batch.positions), x.shape[1]).index_copy(0, rows, x)
        if self.standardize:
            x = (x - getattr(self, f"mean{i}")) / getattr(self, f"scale{i}")
        if self.missing == "zero":
            x = torch.where(valid[:, None], x, torch.zeros((), device=x.device))
            x = torch.cat([x, (~valid).float()[:, None]], dim=1)
        return x

    def train(self, mode: bool = True):
        """Train mode, except where it would change what a frozen part computes: batch norms keep their
        running statistics (a batch of 16 gives noisy ones, and the head learnt features made with the running
        ones), and fully frozen submodules keep dropout off."""
        super().train(mode)
        if mode:
            for encoder in self.encoders:
                for module in encoder.modules():
                    params = list(module.parameters())
                    if isinstance(module, nn.modules.batchnorm._BatchNorm) or (
                            params and not any(p.requires_grad for p in params)):
                        module.eval()
        return self

    def encoder_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable encoder parameters, head parameters): they get different learning rates. A trainable
        bfloat16/float16 parameter is represented by a float32 master copy (made here), which the optimizer
        steps: a step of 2e-5 on a weight of 0.05 is below bfloat16's resolution and would be lost."""
        named = [(n, p) for n, p in self.encoders.named_parameters(prefix="encoders") if p.requires_grad]
        self.masters = {n: nn.Parameter(p.detach().float().clone()) for n, p in named if p.dtype in LOW}
        self._low = [(p, self.masters[n]) for n, p in named if n in self.masters]
        encoder = [self.masters.get(n, p) for n, p in named]
        return encoder, [p for p in self.head.parameters() if p.requires_grad]

    def has_float16(self) -> bool:
        return any(p.dtype == torch.float16 for p in self.encoders.parameters())

    def collect_master_grads(self) -> None:
        """After each backward: low-precision gradients move to their master copies, accumulated in float32."""
        for param, master in self._low:
            if param.grad is not None:
                grad = param.grad.float()
                master.grad = grad if master.grad is None else master.grad.add_(grad)
                param.grad = None

    def copy_masters(self) -> None:
        """After an optimizer step: the network runs with its master weights rounded to its dtype."""
        with torch.no_grad():
            for param, master in self._low:
                param.copy_(master)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What training changes: trainable parameters (master copies where there are) and every buffer
        (a real copy, on the CPU)."""
        state = {name: self.masters.get(name, p) for name, p in self.named_parameters() if p.requires_grad}
        state.update(dict(self.named_buffers()))
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_keys())
        if set(state) != expected:
            raise InputError(f"the checkpoint holds other tensors than this model trains ({len(set(state) ^ expected)} "
                             "differ): was it made with other --freeze / --unfreeze-last?")
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
                if k in self.masters:
                    self.masters[k].copy_(v)

    def trainable_state_keys(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad] + [n for n, _ in self.named_buffers()]


def _prepared(rows: RowSet, feature: str, stats: dict | None, missing: str):
    """A fixed input as the run's head saw it: cached rows through `feat fuse`'s own preparation."""
    from feat.fuse.data import FusionData, prepare

    data = FusionData([feature], rows.ids, rows.split, rows.y, rows.classes, {feature: rows.cached[feature]},
                      {feature: rows.valid[feature]}, {}, rows.report)
    matrix = prepare(data, stats and {feature: stats[feature]}, missing)[0]
    return matrix if sp.issparse(matrix) else torch.from_numpy(matrix)


def _take(matrix, positions: np.ndarray) -> torch.Tensor:
    from feat.fuse.train import Inputs

    if sp.issparse(matrix):
        return Inputs([matrix]).take(positions)[0]
    return matrix.index_select(0, torch.from_numpy(positions))


# ----- which parts train ---------------------------------------------------------------------------------------
def freeze_all(module: nn.Module) -> None:
    module.requires_grad_(False)


def train_last_blocks(module: nn.Module, n: int, probe) -> dict:
    """Train only the last `n` blocks of every layer stack the forward pass runs through, and the layers run
    after the final stack (final norm, pooler, projection); the rest (embeddings, earlier blocks, unused
    towers) stays frozen. `probe()` runs one forward pass: the stacks and their order are observed, not
    guessed from attribute names, so one rule fits BERT, DeBERTa, ViT, EfficientNet and the joint models."""
    names = {m: name for name, m in module.named_modules()}
    started: dict[nn.Module, int] = {}

    def hook(m, args):
        started.setdefault(m, len(started))

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with torch.no_grad():
            probe()
    finally:
        for handle in handles:
            handle.remove()
    stacks = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList):
            ran = [b for b in m if b in started]
            if len(ran) >= 2:
                stacks[name] = ran
    # A list inside a block of another stack (heads of an attention layer, ...) is not a stack of its own.
    stacks = {name: blocks for name, blocks in stacks.items()
              if not any(name.startswith(f"{other}.") for other in stacks if other != name)}
    if not stacks:
        raise InputError("--unfreeze-last: no layer stack (a list of blocks run in sequence) found in "
                         f"{type(module).__name__}")
    module.requires_grad_(False)
    for blocks in stacks.values():
        for block in blocks[max(0, len(blocks) - n):] if n > 0 else []:
            block.requires_grad_(True)
    last_block = max((blocks[-1] for blocks in stacks.values()), key=lambda b: started[b])
    if n > 0:
        for m, order in started.items():
            if order > started[last_block]:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
    return {"stacks": {name: len(blocks) for name, blocks in stacks.items()},
            "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "frozen_parameters": sum(p.numel() for p in module.parameters() if not p.requires_grad)}


def enable_grad_checkpointing(module: nn.Module) -> str:
    """Recompute activations in the backward pass: transformers' own switch where the model has one, else
    each block of the largest layer stack is checkpointed (state dict keys unchanged)."""
    net = module.net
    if getattr(net, "supports_gradient_checkpointing", False):
        if hasattr(net, "activation_checkpointing_enable"):  # transformers 5 (the old name is deprecated)
            net.activation_checkpointing_enable({"use_reentrant": False})
        else:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers also makes the embedding output require grad (needed by reentrant checkpointing only):
        # under --unfreeze-last the frozen blocks, not checkpointed, then kept their activations for a backward
        # pass that needs none (tiny DeBERTa, last block trained: more saved activations than without it).
        if hasattr(net, "disable_input_require_grads"):
            net.disable_input_require_grads()
        return "transformers"
    lists = [m for m in net.modules() if isinstance(m, nn.ModuleList) and len(m) >= 2]
    if not lists:
        raise InputError(f"--grad-checkpointing: {type(net).__name__} has no layer stack to checkpoint")
    stack = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    for block in stack:
        block.forward = functools.partial(_checkpointed, block, block.forward)
    return "blocks"


def _checkpointed(block: nn.Module, forward, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    if block.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)
