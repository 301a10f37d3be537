"""Shared by the deployment tests (test_deployment.py, test_coordinator_crash.py): the federation's files (tiny
workspace, certificates), the medim executables as subprocesses, site files, waiting, and the Flower processes a
test must leave behind none of."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from client.config import SiteConfig, save_site_config
from medim.config import TrainConfig, load_preset
from medim.pipeline import Workspace, bootstrap
from medim.privacy import PrivacyConfig

SITES = ["hospital-a", "pathlab-c"]
FLOWER = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-clientapp",
    "flwr-serverapp",
    "flwr ",
)


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tool(name: str, *args: str) -> list[str]:
    module = {"medim-server": "server.cli", "medim-client": "client.cli", "medim-certs": "server.certs"}[name]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())", *args]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def flower_processes(marks: list[str]) -> list[str]:
    """Command lines of live Flower processes that mention one of ``marks`` (our ports and folders)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(f in cmd for f in FLOWER) and any(m in cmd for m in marks):
            found.append(f"{entry}: {cmd}")
    return found


def wait_for(path: Path, text: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(
        f"{text!r} not in {path} after {timeout}s:\n{path.read_text(errors='replace')[-4000:]}"
    )


def site_file(
    root: Path,
    ws: Workspace,
    name: str,
    *,
    port: int,
    node_port: int,
    certs: Path | None = None,
    dp_seed: int | None = None,
    **changes,
) -> Path:
    """``root/sites/NAME/site.yaml`` (state in ``root/sites/NAME/state``); ``dp_seed`` seeds the DP noise."""
    certs = certs or root / "certs"
    privacy = replace(load_preset(PrivacyConfig, "dp", "default"), epsilon_budget=100.0, seed=dp_seed)
    cfg = replace(
        load_preset(SiteConfig, "site", "default"),
        name=name,
        data=[str(p) for p in ws.sites.get(name, ws.sites["hospital-a"])],
        base_model=str(ws.base_model),
        tokenizer=str(ws.tokenizer),
        state_dir=str(root / "sites" / name / "state"),
        autocast_bf16=False,
        report_losses=False,
        privacy=privacy,
        coordinator=f"127.0.0.1:{port}",
        ca_cert=str(certs / "ca" / "ca.crt"),
        node_key=str(certs / "sites" / name / "node.key"),
        node_port=node_port,
    )
    path = root / "sites" / name / "site.yaml"
    save_site_config(replace(cfg, **changes), path)
    return path


def make_federation(root: Path, sites: list[str]) -> Path:
    """A tiny workspace in ``root/ws`` and certificates in ``root/certs`` (CA + coordinator, a key per site)."""
    bootstrap(
        root / "ws",
        preset="tiny",
        synth_scale=0.15,
        pretrain=TrainConfig(steps=3, batch_size=4, warmup_steps=1, autocast_bf16=False),
        progress=False,
    )
    certs = ["--dir", str(root / "certs")]
    for args in (["init", "--host", "127.0.0.1"], *[["site", s] for s in sites]):
        subprocess.run(tool("medim-certs", *certs, *args), check=True, capture_output=True, timeout=60)
    return root
