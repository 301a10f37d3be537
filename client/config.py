"""A site's own configuration (the ``site`` config group, presets under ``configs/site/``).

A hospital writes this file once: its name, where its prepared data and its copy of the base model and image
tokenizer live, which modalities it trains on, where it keeps its state (the privacy accountant ledger), and its
privacy settings. The coordinator never sends any of it and cannot override it: a train message sets only the
per-round task (:class:`client.protocol.TrainInstructions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from medim.config import ConfigError, build_config, check, check_positive
from medim.privacy import PrivacyConfig

MODALITIES = ("cxr", "pathology")


@dataclass
class SiteConfig:
    """One site. Paths are absolute or relative to the working directory of the site's process.

    Deployment (``medim-client``): ``coordinator`` is the SuperLink's ``host:port``, ``ca_cert`` the federation CA
    that verifies it (TLS), ``node_key`` this site's node-authentication private key (``medim-certs site``),
    ``node_port`` the local port of the SuperNode's runtime API (distinct per site on one machine); ``insecure``
    (plaintext, no node authentication) is for tests on loopback only.

    ``report_losses`` sends the round's training loss and the fixed-grid loss per modality on up to ``loss_rows``
    of the site's own held-back records: aggregate numbers, but not covered by the DP accountant; a site that
    wants only DP-covered releases sets it to false.

    ``keep_moments`` keeps the site's AdamW moments in ``state_dir`` from one round to the next
    (:mod:`client.moments`); they never leave the site. False = a fresh optimizer every round.
    """

    name: str = ""
    data: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    base_model: str = ""
    tokenizer: str = ""
    state_dir: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])
    diffusion: str = "default"
    threads: int = 1
    autocast_bf16: bool = True
    loss_rows: int = 16
    report_losses: bool = True
    keep_moments: bool = True
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    coordinator: str = ""
    ca_cert: str = ""
    node_key: str = ""
    node_port: int = 9094
    insecure: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.privacy, dict):
            self.privacy = PrivacyConfig(**self.privacy)
        bad = [m for m in self.modalities if m not in MODALITIES]
        check(not bad, "site.modalities", self.modalities, "a subset of " + ", ".join(MODALITIES))
        check_positive("site.threads", self.threads)
        check(self.loss_rows >= 0, "site.loss_rows", self.loss_rows, ">= 0")
        check(len(self.splits) > 0, "site.splits", self.splits, "a non-empty list")
        check(0 < self.node_port < 65536, "site.node_port", self.node_port, "a TCP port")

    def check_complete(self) -> None:
        """Raise ConfigError naming the first path setting a site cannot run without."""
        for key in ("name", "base_model", "tokenizer", "state_dir"):
            check(bool(getattr(self, key)), f"site.{key}", getattr(self, key), "a non-empty value")
        check(bool(self.data), "site.data", self.data, "at least one prepared folder")

    @property
    def ledger_path(self) -> Path:
        return Path(self.state_dir) / "privacy-ledger.json"

    @property
    def moments_dir(self) -> Path:
        return Path(self.state_dir) / "moments"


def save_site_config(cfg: SiteConfig, path: Path) -> None:
    """Write ``cfg`` as YAML (plain data only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))


def load_site_config(path: Path) -> SiteConfig:
    """Read a site file (YAML, safe loader), validate it and check it names everything a site needs."""
    if not path.is_file():
        raise ConfigError(f"site config {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"site config {path}: expected a mapping")
    cfg = build_config(SiteConfig, raw, where=str(path))
    cfg.check_complete()
    return cfg
