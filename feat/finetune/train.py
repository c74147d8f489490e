"""The fine-tuning loop: the reference's protocol, resumable.

AdamW with two learning rates (encoders, head), weight decay, linear warm-up then linear decay over all
optimizer steps, gradient accumulation, global grad-norm clipping (after unscaling under fp16), early
stopping on the dev metric with patience, the best state kept as a real copy (the reference's shallow
`state_dict().copy()` kept the last epoch's weights), test left to the caller, once, with that state.

Everything the loop needs to continue lives in `loop` (plain JSON) and the tensors of a checkpoint, written
at the end of each epoch and every `checkpoint_every` optimizer steps: a resumed run rebuilds the same
batches (a function of seed and epoch), restores the RNG, and continues where the checkpoint was taken.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from feat.console import progress_bar
from feat.finetune import checkpoint as ckpt
from feat.finetune.config import FinetuneConfig
from feat.finetune.data import RowSet, batches, epoch_chunks
from feat.finetune.device import Accelerator
from feat.finetune.distributed import World
from feat.finetune.parity import evaluate
from feat.fuse.metrics import score


@dataclass
class TrainResult:
    best_epoch: int  # 1-based epoch whose state is kept
    history: list[dict]  # one row per epoch, epoch 0 = before any step
    steps: int  # optimizer steps taken
    seconds: float  # time spent in training steps (no evaluation)
    stopped: str  # why training ended


def new_loop(initial_dev: dict, parity: dict, metric: str) -> dict:
    """The loop state before any step; epoch 0 of the history is the model as assembled from the run."""
    row = {"epoch": 0, "step": 0, "train_loss": float("nan"), "dev_loss": initial_dev["loss"],
           f"dev_{metric}": initial_dev[metric], "lr_encoder": 0.0, "lr_head": 0.0}
    return {"epoch": 1, "batch": 0, "step": 0, "loss_sum": 0.0, "seen": 0, "best": -math.inf, "best_epoch": 0,
            "stale": 0, "done": False, "stopped": "", "history": [row], "train_seconds": 0.0,
            "initial_dev": initial_dev, "parity": parity}


def fit(model, rows: RowSet, cfg: FinetuneConfig, accel: Accelerator, metric: str, class_weight: torch.Tensor | None,
        transforms: dict, num_workers: int, out: Path, identity: dict, loop: dict,
        resumed: ckpt.Checkpoint | None = None, world: World = World()) -> TrainResult:
    encoder_params, head_params = model.encoder_groups()
    # Both groups always, in this order: a checkpoint's optimizer state is indexed by position.
    # fused: one kernel for all tensors; the per-tensor loop took 14% of a CPU step for MiniLM + EfficientNet.
    optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": cfg.lr_encoder},
                                   {"params": head_params, "lr": cfg.lr_head}], weight_decay=cfg.weight_decay,
                                  fused=True)
    train_rows, dev_rows = rows.positions("train"), rows.positions("dev")
    per_epoch = math.ceil(math.ceil(len(train_rows) / cfg.batch_size) / cfg.grad_accum)
    total = cfg.epochs * per_epoch if not cfg.max_steps else min(cfg.epochs * per_epoch, cfg.max_steps)
    warm = int(cfg.warmup * total)
    # transformers' get_linear_schedule_with_warmup, the reference's schedule.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / max(1, warm) if s < warm else
                                                  max(0.0, (total - s) / max(1, total - warm)))
    # float16 weights (a float16 cache) need loss scaling as float16 autocast does.
    scaler = accel.grad_scaler(model.has_float16())
    # Summed, then divided by the global batch's weight: with several processes, each holding a share of the
    # batch, the summed gradients are those of the whole batch (a mean per share would weight shares equally).
    criterion = nn.CrossEntropyLoss(weight=class_weight.to(accel.device) if class_weight is not None else None,
                                    reduction="sum")
    row_weight = class_weight.numpy()[rows.y] if class_weight is not None else np.ones(len(rows.y))
    params = encoder_params + head_params
    best_state = None
    if resumed is not None:
        model.load_trainable_state(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        if resumed.scaler:
            scaler.load_state_dict(resumed.scaler)
        ckpt.set_rng_state(ckpt.rank_rng(resumed.rng, world.rank), accel.device)
        best_state = resumed.best
    else:
        torch.manual_seed(cfg.seed + world.rank)  # each process its own dropout masks
    model.autocast = accel.autocast
    y = torch.from_numpy(rows.y)
    best_changed = False

    # The running loss stays on the device: `loss.item()` at every step would wait for the GPU each time.
    running = torch.zeros((), dtype=torch.float64, device=accel.device)

    def sync_loss() -> None:
        loop["loss_sum"] += float(world.sum(running))
        running.zero_()

    def save_checkpoint() -> None:
        sync_loss()
        rng = ckpt.merge_rank_rng(world.gather(ckpt.rng_state(accel.device)))
        if world.main:
            ckpt.save(out, ckpt.Checkpoint(identity, loop, model.trainable_state(), best_state,
                                           optimizer.state_dict(), scheduler.state_dict(), scaler.state_dict(), rng),
                      best_changed)

    while not loop["done"] and loop["epoch"] <= cfg.epochs:
        epoch = loop["epoch"]
        chunks = epoch_chunks(train_rows, cfg.batch_size, cfg.seed, epoch)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        with progress_bar(f"epoch {epoch}", len(chunks), unit="batches") as advance:
            advance(loop["batch"])
            shares = [world.share(chunk) for chunk in chunks[loop["batch"]:]]
            todo = batches(rows, [s for s in shares if len(s)], transforms, num_workers, accel.pin_memory)
            for b, share in enumerate(shares, start=loop["batch"]):
                group_end = min(b - b % cfg.grad_accum + cfg.grad_accum, len(chunks))
                group_size = group_end - (b - b % cfg.grad_accum)
                if len(share):  # the last batch of an epoch may leave a process without rows
                    batch = next(todo)
                    loss = criterion(model(batch).float(), y[batch.positions].to(accel.device))
                    loss = loss / float(row_weight[chunks[b]].sum())
                    scaler.scale(loss / group_size).backward()
                    model.collect_master_grads()
                    running.add_(loss.detach() * len(chunks[b]))
                loop["seen"] += len(chunks[b])
                advance(1)
                if b + 1 < group_end:
                    continue
                world.sum_gradients(params)
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                scaler.step(optimizer)
                scaler.update()
                model.copy_masters()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                loop["step"] += 1
                loop["batch"] = b + 1
                loop["train_seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                if cfg.max_steps and loop["step"] >= cfg.max_steps:
                    loop["done"], loop["stopped"] = True, f"--max-steps {cfg.max_steps} reached"
                    break
                if cfg.checkpoint_every and loop["step"] % cfg.checkpoint_every == 0 and b + 1 < len(chunks):
                    save_checkpoint()

        sync_loss()
        from feat.fuse.train import split_metrics

        logits = evaluate(model, rows, dev_rows, accel.eval_batch(cfg.batch_size), transforms, num_workers,
                          accel.pin_memory)
        dev = split_metrics(logits, rows.y[dev_rows])[0]
        lrs = scheduler.get_last_lr()
        loop["history"].append({"epoch": epoch, "step": loop["step"],
                                "train_loss": loop["loss_sum"] / max(1, loop["seen"]), "dev_loss": dev["loss"],
                                f"dev_{metric}": dev[metric], "lr_encoder": lrs[0], "lr_head": lrs[1]})
        best_changed = False
        if score(dev, metric) > loop["best"] or best_state is None:
            loop["best"], loop["best_epoch"], loop["stale"] = score(dev, metric), epoch, 0
            best_state, best_changed = model.trainable_state(), True  # a real copy, on the CPU
        else:
            loop["stale"] += 1
            if loop["stale"] >= cfg.patience:
                loop["done"], loop["stopped"] = True, f"no dev improvement for {cfg.patience} epoch(s)"
        loop["epoch"], loop["batch"], loop["loss_sum"], loop["seen"] = epoch + 1, 0, 0.0, 0
        if loop["epoch"] > cfg.epochs and not loop["done"]:
            loop["done"], loop["stopped"] = True, f"{cfg.epochs} epoch(s) done"
        save_checkpoint()

    model.load_trainable_state(best_state)
    return TrainResult(loop["best_epoch"], loop["history"], loop["step"], loop["train_seconds"], loop["stopped"])


def class_weights(rows: RowSet, mode: str) -> torch.Tensor | None:
    """The run's own loss weighting (`feat fuse --class-weights`), from the train labels."""
    if mode != "balanced":
        return None
    from feat.fuse.train import class_weights as balanced

    train = rows.positions("train")
    return balanced(rows.y[train], len(rows.classes))


def seconds_per_step(result: TrainResult) -> float:
    return result.seconds / result.steps if result.steps else float("nan")
