"""The site's privacy ledger: the DP-SGD accountant's history, persisted across rounds and process restarts.

Flower runs every message in a new process, so the accountant cannot live in memory. The ledger is a JSON file
(never pickle) in the site's state directory holding the Opacus accountant history -- a list of
``(noise_multiplier, sample_rate, steps)`` -- plus the accountant kind and delta it is read with. Epsilon is
recomputed from the whole history by the Opacus accountant, so it only grows as rounds are added.

Writes are atomic (temporary file in the same directory, fsync, rename). A file that exists but cannot be read
is an error naming the file: silently starting from zero would erase the site's privacy spend.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opacus.accountants import create_accountant

FORMAT = "medim-privacy-ledger"
VERSION = 1
ACCOUNTANTS = ("rdp", "prv", "gdp")


class LedgerError(RuntimeError):
    """The ledger file is unreadable or was written with other accounting settings; the message names it."""


@dataclass(frozen=True)
class LedgerEntry:
    """``steps`` DP-SGD steps with Gaussian noise ``noise_multiplier`` and Poisson rate ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and 0 < self.sample_rate <= 1 and self.steps >= 0):
            raise ValueError(f"invalid ledger entry {self}")


@dataclass
class PrivacyLedger:
    """Accountant history of one site, read with one accountant kind and delta.

    ``non_private_rounds`` counts rounds trained without DP on this site's data: once positive, the site's
    epsilon is infinite (no guarantee), whatever the DP rounds add up to.
    """

    path: Path
    accountant: str
    delta: float
    history: list[LedgerEntry] = field(default_factory=list)
    rounds: int = 0
    non_private_rounds: int = 0

    @classmethod
    def load(cls, path: str | Path, *, accountant: str, delta: float) -> PrivacyLedger:
        """Read ``path`` (a missing file is a fresh site with nothing spent).

        Raises:
            LedgerError: the file is corrupt, or was written with another accountant or delta.
        """
        path = Path(path)
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant={accountant!r} is invalid: allowed one of {ACCOUNTANTS}")
        if not path.exists():
            return cls(path=path, accountant=accountant, delta=delta)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            ledger = cls._from_json(path, raw)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LedgerError(
                f"privacy ledger {path} is unreadable ({err}); refusing to reset this site's privacy spend: "
                "restore the file from backup or investigate before training again"
            ) from err
        if ledger.accountant != accountant or not math.isclose(ledger.delta, delta, rel_tol=1e-12):
            raise LedgerError(
                f"privacy ledger {path} was written with accountant={ledger.accountant!r}, "
                f"delta={ledger.delta!r}; the configuration says privacy.accountant={accountant!r}, "
                f"privacy.delta={delta!r}: restore those settings (the spend so far is stated for them)"
            )
        return ledger

    @classmethod
    def _from_json(cls, path: Path, raw: Any) -> PrivacyLedger:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} file")
        history = [
            LedgerEntry(float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"]))
            for e in raw["history"]
        ]
        return cls(
            path=path,
            accountant=str(raw["accountant"]),
            delta=float(raw["delta"]),
            history=history,
            rounds=int(raw["rounds"]),
            non_private_rounds=int(raw["non_private_rounds"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The file's content; ``epsilon`` is informational (always recomputed from ``history`` on read)."""
        eps = self.epsilon()
        return {
            "format": FORMAT,
            "version": VERSION,
            "accountant": self.accountant,
            "delta": self.delta,
            "rounds": self.rounds,
            "non_private_rounds": self.non_private_rounds,
            "epsilon": eps if math.isfinite(eps) else None,
            "history": [
                {"noise_multiplier": e.noise_multiplier, "sample_rate": e.sample_rate, "steps": e.steps}
                for e in self.history
            ],
        }

    def epsilon(self, planned: LedgerEntry | None = None) -> float:
        """Epsilon at ``self.delta`` of the whole history (plus ``planned`` steps, when given)."""
        if self.non_private_rounds:
            return math.inf
        history = merge([*self.history, *([planned] if planned is not None else [])])
        if not history:
            return 0.0
        if any(e.noise_multiplier == 0 for e in history):
            return math.inf
        return _epsilon(self.accountant, self.delta, tuple(history))

    def with_round(self, history: list[LedgerEntry]) -> PrivacyLedger:
        """A new ledger: ``history`` (this one's plus the round's steps) and one more round."""
        return PrivacyLedger(
            path=self.path,
            accountant=self.accountant,
            delta=self.delta,
            history=merge(history),
            rounds=self.rounds + 1,
            non_private_rounds=self.non_private_rounds,
        )

    def with_non_private_round(self) -> PrivacyLedger:
        """A new ledger recording one round trained without DP (epsilon becomes infinite)."""
        return PrivacyLedger(
            path=self.path,
            accountant=self.accountant,
            delta=self.delta,
            history=list(self.history),
            rounds=self.rounds + 1,
            non_private_rounds=self.non_private_rounds + 1,
        )

    def save(self) -> None:
        """Write the ledger atomically (temp file + fsync + rename), creating the directory if needed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@functools.lru_cache(maxsize=512)
def _epsilon(accountant: str, delta: float, history: tuple[LedgerEntry, ...]) -> float:
    """The accountant's epsilon of a merged history; memoised: a site round asks for the same one several times
    (budget check, write-ahead, reply), and one accountant call costs 0.2 s (rdp) to 0.5 s (prv) here."""
    acc = create_accountant(accountant)
    acc.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
    return float(acc.get_epsilon(delta=delta))


def merge(history: list[LedgerEntry]) -> list[LedgerEntry]:
    """Join consecutive entries with the same noise and rate (as the Opacus accountants do)."""
    out: list[LedgerEntry] = []
    for e in history:
        if out and (out[-1].noise_multiplier, out[-1].sample_rate) == (e.noise_multiplier, e.sample_rate):
            out[-1] = LedgerEntry(e.noise_multiplier, e.sample_rate, out[-1].steps + e.steps)
        elif e.steps > 0:
            out.append(e)
    return out
