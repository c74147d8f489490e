"""The last checkpoint of a fine-tuning run, for `--resume` after a crash.

FT/checkpoint/ holds `checkpoint.json` (written last, atomically: the checkpoint it names is complete) and
the safetensors files it names: the trained tensors with the optimizer moments and the RNG state, and the
best state so far. Tensors are safetensors, the rest JSON: nothing is ever unpickled from a run folder.
Older files are removed once the JSON points past them, so a crash at any moment leaves one whole checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from feat.errors import InputError
from feat.fuse import artifacts as art

FOLDER, INDEX = "checkpoint", "checkpoint.json"
VERSION = 1


@dataclass
class Checkpoint:
    config: dict  # the run's identity (source run, finetune config, features): must match to resume
    loop: dict  # epoch, batch, step, history, best, ... (see train.py)
    model: dict[str, torch.Tensor]  # FinetuneModel.trainable_state()
    best: dict[str, torch.Tensor] | None  # the best state so far (None before the first dev evaluation)
    optimizer: dict  # torch state_dict form
    scheduler: dict
    scaler: dict
    rng: dict[str, torch.Tensor]


def save(out: Path, checkpoint: Checkpoint, best_changed: bool) -> None:
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    previous = _read_index(folder)
    serial = (previous or {}).get("serial", 0) + 1
    tensors = {f"model/{k}": v for k, v in checkpoint.model.items()}
    groups = checkpoint.optimizer["param_groups"]
    for index, state in checkpoint.optimizer["state"].items():
        for key, value in state.items():
            tensors[f"optimizer/{index}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors.update({f"rng/{k}": v for k, v in checkpoint.rng.items()})
    name = f"state-{serial:06d}.safetensors"
    art.save_model(folder / name, tensors, {"format": "pt"})
    best_name = (previous or {}).get("best")
    if checkpoint.best is not None and (best_changed or best_name is None):
        best_name = f"best-{serial:06d}.safetensors"
        art.save_model(folder / best_name, checkpoint.best, {"format": "pt"})
    loop = dict(checkpoint.loop, best=None if math.isinf(checkpoint.loop["best"]) else checkpoint.loop["best"])
    index = {"version": VERSION, "serial": serial, "state": name, "best": best_name, "config": checkpoint.config,
             "loop": loop, "optimizer_groups": groups, "scheduler": checkpoint.scheduler,
             "scaler": checkpoint.scaler}
    art.write_json(folder / INDEX, index)
    for file in folder.glob("*.safetensors"):
        if file.name not in (name, best_name):
            file.unlink(missing_ok=True)


def load(out: Path) -> Checkpoint | None:
    """The last complete checkpoint in `out`, or None."""
    folder = Path(out) / FOLDER
    index = _read_index(folder)
    if index is None:
        return None
    if index.get("version") != VERSION:
        raise InputError(f"{folder}: checkpoint format {index.get('version')} is not this feat's ({VERSION})")
    tensors = art.load_model(folder / index["state"])
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, param, name = key.split("/", 2)
            state.setdefault(int(param), {})[name] = value
    best = art.load_model(folder / index["best"]) if index.get("best") else None
    loop = dict(index["loop"])
    loop["best"] = -math.inf if loop["best"] is None else loop["best"]
    return Checkpoint(index["config"], loop, model, best, {"state": state, "param_groups": index["optimizer_groups"]},
                      index["scheduler"], index["scaler"], rng)


def remove(out: Path) -> None:
    """After a finished run: the checkpoint is only for crashes, and it is the size of the model three times."""
    folder = Path(out) / FOLDER
    if folder.is_dir():
        (folder / INDEX).unlink(missing_ok=True)
        for file in folder.iterdir():
            file.unlink(missing_ok=True)
        folder.rmdir()


def rng_state(device: str = "cpu") -> dict[str, torch.Tensor]:
    """The CPU generator, and the training GPU's only: the other GPUs' generators are not this run's, and a
    resume may see fewer GPUs, or its GPU under another index."""
    state = {"cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: str = "cpu") -> None:
    torch.set_rng_state(state["cpu"])
    if device.startswith("cuda") and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def merge_rank_rng(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One checkpoint's RNG state for every process of a multi-process run: the first process's under its own
    names, process r's prefixed `rank<r>.`."""
    merged = dict(states[0])
    for rank, state in enumerate(states[1:], start=1):
        merged.update({f"rank{rank}.{k}": v for k, v in state.items()})
    return merged


def rank_rng(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Process `rank`'s RNG state; a process the checkpoint did not have (resumed with more processes) takes
    the first process's."""
    own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"rank{rank}.")}
    return own if rank and own else {k: v for k, v in state.items() if not k.startswith("rank")}


def _read_index(folder: Path) -> dict | None:
    path = folder / INDEX
    return art.read_json(path) if path.exists() else None
