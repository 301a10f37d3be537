"""A hospital's node: preflight checks on its site config, the ``flower-supernode`` command, supervision.

``medim-client --site=NAME`` refuses to start (exit 2, naming the setting) when the site cannot run safely:
missing data, base model, tokenizer, key or CA; a key readable by others; a config that would send more than the
trainable tensors and the protocol's aggregate counters (``report_losses: true`` sends loss values computed on
the site's records, not covered by DP). It then runs ``flower-supernode`` with TLS (the federation CA verifies the
coordinator) and node authentication (the site's key), offline (no runtime dependency installation, Hugging Face
offline), restarts it with exponential backoff when the connection drops or the coordinator has not registered the site's
key yet (the site may start first), and stops for good when the coordinator cannot be verified (wrong CA) or
the key is unreadable, or after ``max_restarts`` restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.config import SiteConfig, load_site_config
from client.processes import Child, tool, tool_env
from medim.config import ConfigError

SITE_CONFIGS = Path("configs/site")
NOT_REGISTERED, UNTRUSTED, BAD_KEY, DROPPED = "not-registered", "untrusted", "bad-key", "dropped"
FATAL = {
    NOT_REGISTERED: "the coordinator refused this site's key: it is not registered "
    "(send node.pub to the coordinator, who runs medim-server with it)",
    UNTRUSTED: "the coordinator's certificate could not be verified with site.ca_cert "
    "(wrong CA file, or the coordinator's certificate does not name this address)",
    BAD_KEY: "site.node_key is not an ECDSA private key in OpenSSH format (medim-certs site NAME)",
}
_SIGNS = {
    NOT_REGISTERED: ("Failed to activate SuperNode", "No SuperNode found"),
    UNTRUSTED: ("CERTIFICATE_VERIFY_FAILED", "SSL/TLS handshake error"),
    BAD_KEY: ("Unable to parse the private key",),
}


def resolve_site_path(site: str) -> Path:
    """``--site`` as a path to a YAML file, else the name of ``configs/site/<site>.yaml``."""
    path = Path(site)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return SITE_CONFIGS / f"{site}.yaml"


def _exists(key: str, value: str, what: str) -> None:
    if not value:
        raise ConfigError(f"site.{key} is not set: {what} is required")
    if not Path(value).exists():
        raise ConfigError(f"site.{key}={value} does not exist: {what} is required")


def check_deployment(site: SiteConfig) -> None:
    """Raise ConfigError naming the first setting that stops ``site`` from joining a federation safely."""
    if not site.coordinator or site.coordinator.rpartition(":")[2].isdigit() is False:
        raise ConfigError(f"site.coordinator={site.coordinator!r} is invalid: expected host:port")
    for folder in site.data:
        path = Path(folder)
        if not path.is_dir() or not any(path.iterdir()):
            raise ConfigError(f"site.data: {folder} is missing or empty (prepare it with medim-data)")
    _exists("base_model", site.base_model, "the local copy of the base model (no downloads at run time)")
    _exists("tokenizer", site.tokenizer, "the local image tokenizer")
    if site.report_losses:
        raise ConfigError(
            "site.report_losses=true would send loss values computed on this site's records (not covered "
            "by DP) besides the trainable tensors: set report_losses: false to deploy"
        )
    if site.insecure:
        return
    _exists("ca_cert", site.ca_cert, "the federation CA certificate (from the coordinator)")
    _exists("node_key", site.node_key, "this site's private key (medim-certs site NAME)")
    if Path(site.node_key).stat().st_mode & 0o077:
        raise ConfigError(f"site.node_key={site.node_key} is readable by others: chmod 600 it")


@dataclass(frozen=True)
class SiteFile:
    """A site's config file (absolute path) and its checked contents."""

    path: Path
    config: SiteConfig


def load_deployable_site(site: str) -> SiteFile:
    """The site file named by ``--site``, loaded and checked with :func:`check_deployment`."""
    path = resolve_site_path(site).resolve()
    cfg = load_site_config(path)
    check_deployment(cfg)
    return SiteFile(path=path, config=cfg)


def supernode_command(site: SiteConfig, site_file: Path) -> list[str]:
    """``flower-supernode`` for this site (TLS + node authentication unless ``site.insecure``)."""
    argv = [tool("flower-supernode"), "--superlink", site.coordinator, "--port", str(site.node_port)]
    if site.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(Path(site.ca_cert).resolve())]
        argv += ["--auth-supernode-private-key", str(Path(site.node_key).resolve())]
    return argv + ["--node-config", f'site-config="{site_file}"']


def node_env(site: SiteConfig) -> dict[str, str]:
    """Offline: no Hugging Face downloads; Flower's home (apps, config) inside the site's state dir."""
    return tool_env(
        {
            "FLWR_HOME": str(Path(site.state_dir).resolve() / "flwr"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
    )


def classify_exit(log_tail: str) -> str:
    """Why a SuperNode stopped, from its log: one of the FATAL keys, else DROPPED (worth a retry)."""
    for kind, signs in _SIGNS.items():
        if any(s in log_tail for s in signs):
            return kind
    return DROPPED


@dataclass(frozen=True)
class Backoff:
    """Restart delays ``initial * 2**k`` capped at ``maximum``; ``max_restarts`` None = forever."""

    initial: float = 1.0
    maximum: float = 60.0
    max_restarts: int | None = None

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * 2**attempt)


@dataclass
class NodeOutcome:
    """How supervision ended: ``reason`` is a FATAL key, "gave-up", or "" (stopped by a signal)."""

    reason: str
    restarts: int
    message: str = ""


def supervise(
    site: SiteConfig, site_file: Path, *, log: Path, backoff: Backoff, say: Callable[[str], None]
) -> NodeOutcome:
    """Run the SuperNode until a fatal refusal or too many restarts; Shutdown propagates to the caller."""
    restarts, healthy_after = 0, 60.0
    while True:
        child = Child(
            "flower-supernode", supernode_command(site, site_file), log, env=node_env(site), echo=say
        )
        started = time.monotonic()
        try:
            child.start()
            code = child.wait()
        finally:
            child.stop()
        kind = classify_exit(child.tail(60))
        if kind in (UNTRUSTED, BAD_KEY):
            return NodeOutcome(kind, restarts, FATAL[kind])
        if time.monotonic() - started > healthy_after:
            restarts = 0
        if backoff.max_restarts is not None and restarts >= backoff.max_restarts:
            if kind == NOT_REGISTERED:
                return NodeOutcome(kind, restarts, FATAL[kind])
            return NodeOutcome("gave-up", restarts, f"flower-supernode exited ({code}) {restarts + 1} times")
        wait = backoff.delay(restarts)
        why = FATAL[kind] if kind == NOT_REGISTERED else f"flower-supernode exited ({code})"
        say(f"medim-client: {why}; reconnecting in {wait:.0f}s")
        time.sleep(wait)
        restarts += 1
