"""Atomic per-round checkpoints of the coordinator's state, and loading the latest one for ``resume``.

Layout under the checkpoint root::

    round-0003/trainable.safetensors   global trainable state (the names a site sends)
    round-0003/strategy.safetensors    strategy state (FedAdam moments ``m/<name>``, ``v/<name>``)
    round-0003/rng.safetensors         torch CPU RNG state
    round-0003/state.json              round, config hash, privacy ledger, Python RNG state, history, audit head
    LATEST                             name of the newest complete round folder

A round folder is written under a temporary name, fsynced and renamed into place; ``LATEST`` is replaced
atomically after that, so a crash at any point leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

LATEST = "LATEST"
FORMAT = 1


@dataclass
class ServerState:
    """Everything needed to continue a federated run after ``round``.

    ``trainable``: {name: float32 array [tensor shape]}; ``ledger``: {site: {"epsilon", "delta", "steps", ...}};
    ``history``: one JSON-able record per finished round (see :mod:`server.loop`).
    """

    round: int
    trainable: dict[str, np.ndarray]
    config_hash: str
    strategy: dict[str, np.ndarray] = field(default_factory=dict)
    ledger: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    audit_head: str = ""
    python_rng: list[Any] = field(default_factory=lambda: _python_rng())
    torch_rng: torch.Tensor = field(default_factory=torch.get_rng_state)

    def capture_rng(self) -> None:
        self.python_rng, self.torch_rng = _python_rng(), torch.get_rng_state()

    def restore_rng(self) -> None:
        version, internal, gauss = self.python_rng
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(self.torch_rng)


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_state(root: Path, state: ServerState, *, keep: int = 2) -> Path:
    """Write ``state`` as ``root/round-NNNN`` atomically, point ``LATEST`` at it, prune to ``keep`` rounds."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{state.round:04d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_numpy(
        {k: np.ascontiguousarray(v) for k, v in state.trainable.items()}, str(tmp / "trainable.safetensors")
    )
    save_numpy(
        {k: np.ascontiguousarray(v) for k, v in state.strategy.items()}, str(tmp / "strategy.safetensors")
    )
    save_torch({"torch": state.torch_rng}, str(tmp / "rng.safetensors"))
    meta = {
        "format": FORMAT,
        "round": state.round,
        "config_hash": state.config_hash,
        "ledger": state.ledger,
        "history": state.history,
        "audit_head": state.audit_head,
        "python_rng": state.python_rng,
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    for file in tmp.iterdir():
        with file.open("rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    _fsync_dir(root)
    _write_atomic(root / LATEST, final.name)
    rounds = sorted(p for p in root.glob("round-*") if p.is_dir())
    for old in rounds[: max(0, len(rounds) - keep)]:
        shutil.rmtree(old)
    return final


def latest_path(root: Path) -> Path | None:
    """The newest complete checkpoint folder, or None when there is none."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_state(path: Path) -> ServerState:
    """Read a folder written by :func:`save_state` (safetensors + JSON only)."""
    meta = json.loads((path / "state.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}/state.json: format {meta.get('format')!r}, expected {FORMAT}")
    return ServerState(
        round=int(meta["round"]),
        trainable=load_numpy(str(path / "trainable.safetensors")),
        config_hash=str(meta["config_hash"]),
        strategy=load_numpy(str(path / "strategy.safetensors")),
        ledger=meta["ledger"],
        history=meta["history"],
        audit_head=str(meta["audit_head"]),
        python_rng=meta["python_rng"],
        torch_rng=load_torch(str(path / "rng.safetensors"))["torch"],
    )
