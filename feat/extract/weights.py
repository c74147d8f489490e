"""Weights identity for fingerprints, without loading a model.

Local folders and files: sha256 of the weight files, remembered per (path, size, mtime) in the user cache so a
warm run does not re-hash gigabytes. Hub ids: the commit of the locally cached snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack")
_MEMO = Path(os.environ.get("FEAT_HOME", Path.home() / ".cache" / "feat")) / "weight_hashes.json"


def weights_identity(name_or_path: str | None) -> str:
    if name_or_path is None:
        return "none"
    path = Path(name_or_path).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if not files:
            return "local:no-weight-files"
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.relative_to(path if path.is_dir() else path.parent).as_posix().encode())
            digest.update(file_sha256(file).encode())
        return f"sha256:{digest.hexdigest()}"
    return f"hub:{name_or_path}@{_hub_commit(name_or_path)}"


def file_sha256(file: Path) -> str:
    stat = file.stat()
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = _read_memo()
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    _write_memo(memo)
    return memo[key]


def _hub_commit(repo_id: str) -> str:
    """The snapshot commit of a cached hub model, or 'unresolved' (the model is then fetched at load)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an unusual hub layout must not stop a run; it only weakens reuse
        return "unresolved"
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/")[1].split("/")[0]
    return "unresolved"


def _read_memo() -> dict:
    try:
        return json.loads(_MEMO.read_text())
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    try:
        _MEMO.parent.mkdir(parents=True, exist_ok=True)
        tmp = _MEMO.with_name(f".{_MEMO.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, _MEMO)
    except OSError:
        pass  # the memo only saves time
