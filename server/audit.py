"""Append-only, hash-chained audit log (JSONL).

Each line is one JSON object ``{"seq", "time", "event", ..., "prev", "hash"}``: ``prev`` is the previous entry's
``hash`` (``GENESIS`` for the first) and ``hash`` is the SHA-256 of the entry's canonical JSON without ``hash``.
Editing, removing or reordering any line breaks the chain, which :func:`verify_chain` reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class ChainCheck:
    """Result of :func:`verify_chain`: ``ok``, the number of valid entries, the head hash, the first problem."""

    ok: bool
    entries: int
    head: str
    problem: str = ""


def verify_chain(path: Path) -> ChainCheck:
    """Walk the log from the start and check every ``seq``, ``prev`` and ``hash``."""
    prev, count = GENESIS, 0
    if not path.is_file():
        return ChainCheck(ok=True, entries=0, head=GENESIS)
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return ChainCheck(False, count, prev, f"line {lineno}: not JSON")
        if not isinstance(entry, dict) or entry.get("seq") != count:
            return ChainCheck(False, count, prev, f"line {lineno}: sequence number is not {count}")
        if entry.get("prev") != prev:
            return ChainCheck(False, count, prev, f"line {lineno}: prev does not match the previous hash")
        if entry.get("hash") != _digest(entry):
            return ChainCheck(False, count, prev, f"line {lineno}: hash does not match the entry")
        prev, count = entry["hash"], count + 1
    return ChainCheck(ok=True, entries=count, head=prev)


class AuditLog:
    """Appends chained entries to ``path``; refuses to extend a log whose chain is broken."""

    def __init__(self, path: Path) -> None:
        self.path = path
        check = verify_chain(path)
        if not check.ok:
            raise ValueError(f"audit log {path} is corrupt: {check.problem}")
        self.head, self.seq = check.head, check.entries

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry (``fields`` must be JSON-serialisable) and fsync it; returns the entry."""
        entry = {"seq": self.seq, "time": round(time.time(), 3), "event": event, **fields, "prev": self.head}
        entry["hash"] = _digest(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.head, self.seq = entry["hash"], self.seq + 1
        return entry
