"""A real deployment on loopback: medim-certs, medim-server (SuperLink, TLS + node authentication) and two
medim-client processes (SuperNodes) train two rounds of the tiny preset; then refusals: an unregistered key, a
client that does not trust the coordinator's CA, a server without certificates, a site with missing data/key.
Every Flower process started here must be gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from deploy_helpers import (
    SITES,
    flower_processes,
    free_ports,
    make_federation,
    site_file,
    start,
    tool,
    wait_for,
)

from medim.pipeline import Workspace
from server.checkpoint import latest_path


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Path:
    """Workspace, certificates (CA, coordinator, two sites, one unregistered intruder), a second CA."""
    root = make_federation(tmp_path_factory.mktemp("deploy"), [*SITES, "intruder"])
    other = ["--dir", str(root / "other-ca"), "init", "--host", "127.0.0.1"]
    subprocess.run(tool("medim-certs", *other), check=True, capture_output=True, timeout=60)
    return root


@pytest.mark.slow
def test_two_hospitals_train_two_rounds_over_tls(fed: Path):
    ws = Workspace.load(fed / "ws")
    port, *node_ports = free_ports(5)
    out = fed / "run"
    server_log = fed / "server.log"
    server = start(
        tool(
            "medim-server",
            *["--out", str(out), "--workspace", str(fed / "ws"), "--sites", *SITES],
            *["--certs", str(fed / "certs"), "--host", "127.0.0.1", "--port", str(port), "--fl", "tiny"],
            *["--rounds", "2", "--fl-overrides", '{"generation": {"every": 0}}'],
        ),
        server_log,
    )
    procs, logs = {"server": server}, {"server": server_log}
    marks = [str(port), str(out), *[str(p) for p in node_ports]]
    try:
        wait_for(server_log, "registered site pathlab-c", 90, server)
        for name, node_port in zip(SITES, node_ports, strict=False):
            path = site_file(fed, ws, name, port=port, node_port=node_port)
            logs[name] = fed / f"{name}.log"
            procs[name] = start(tool("medim-client", "--site", str(path)), logs[name])
        # while the federation trains: an unregistered key and a client trusting another CA are refused
        intruder = site_file(fed, ws, "intruder", port=port, node_port=node_ports[2])
        bad_ca = site_file(
            fed,
            ws,
            "hospital-b",
            port=port,
            node_port=node_ports[3],
            ca_cert=str(fed / "other-ca" / "ca" / "ca.crt"),
            node_key=str(fed / "certs" / "sites" / "intruder" / "node.key"),
        )
        refused = subprocess.run(
            tool("medim-client", "--site", str(intruder), "--max-restarts", "0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 3 and "not registered" in refused.stderr, refused.stdout[-3000:]
        untrusted = subprocess.run(
            tool("medim-client", "--site", str(bad_ca), "--max-restarts", "0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert untrusted.returncode == 3, untrusted.stdout[-3000:]
        assert "could not be verified" in untrusted.stderr
        assert server.wait(timeout=480) == 0, server_log.read_text()[-6000:]
        summary = json.loads((out / "summary.json").read_text())
        assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
        assert summary["rounds"][1]["accepted"] == SITES and summary["audit"]["ok"]
        assert latest_path(out / "checkpoints").name == "round-0002"
        assert (out / "report.html").is_file()
        log = server_log.read_text()
        assert "round 2/2" in log and "registered site hospital-a" in log
        for name in SITES:
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(timeout=60) == 0, logs[name].read_text()[-3000:]
            assert "stopped (SIGTERM)" in logs[name].read_text()
            assert (fed / "sites" / name / "state" / "logs" / "medim-client.log").is_file()
    except BaseException:
        for name, path in logs.items():
            print(f"===== {name}\n{path.read_text(errors='replace')[-5000:]}")
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        time.sleep(1)
        survivors = flower_processes(marks)
        assert not survivors, survivors
    assert (out / "state" / "superlink.db").is_file()


def test_server_refuses_to_start_without_certificates_unless_insecure(fed: Path, tmp_path: Path):
    args = ["--out", str(tmp_path / "run"), "--workspace", str(fed / "ws"), "--sites", *SITES]
    proc = subprocess.run(
        tool("medim-server", *args, "--certs", str(tmp_path / "none")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "medim-certs" in proc.stderr and "not found" in proc.stderr
    proc = subprocess.run(
        tool("medim-server", *args[:2], "--workspace", str(tmp_path), "--sites", *SITES, "--insecure"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "WARNING --insecure" in proc.stderr
    assert "not a bootstrapped workspace" in proc.stderr and "medim-certs" not in proc.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": ["/nonexistent/prepared"]}, "site.data: /nonexistent/prepared is missing"),
        ({"node_key": "/nonexistent/node.key"}, "site.node_key=/nonexistent/node.key does not exist"),
        ({"ca_cert": ""}, "site.ca_cert is not set"),
        ({"report_losses": True}, "site.report_losses=true"),
    ],
)
def test_client_refuses_to_start_without_data_key_or_with_extra_releases(fed: Path, change, message):
    ws = Workspace.load(fed / "ws")
    path = site_file(fed, ws, "hospital-a", port=1, node_port=2, **change)
    proc = subprocess.run(
        tool("medim-client", "--site", str(path)), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
