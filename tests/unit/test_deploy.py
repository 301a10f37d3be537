"""Deployment pieces without a federation: certificates, commands, site preflight, supervision of real processes."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from flwr.app import ConfigRecord
from flwr.cli.supernode.register import try_load_public_key

from client.config import SiteConfig
from client.node import (
    BAD_KEY,
    DROPPED,
    NOT_REGISTERED,
    UNTRUSTED,
    Backoff,
    check_deployment,
    classify_exit,
    supernode_command,
)
from client.processes import descendants, stop_tree
from client.protocol import TrainInstructions
from medim.config import ConfigError
from server.certs import init_coordinator, main, make_site_keys
from server.deploy import CoordinatorSpec, superlink_command


def test_certs_layout_permissions_and_formats(tmp_path: Path):
    files = init_coordinator(tmp_path, hosts=["127.0.0.1", "coordinator.example"])
    keys = make_site_keys(tmp_path, "hospital-a")
    for key in (files.ca_key, files.server_key, keys.private_key):
        assert key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example"]
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    load_pem_private_key(files.server_key.read_bytes(), None)
    assert load_ssh_private_key(keys.private_key.read_bytes(), None).curve.name == "secp384r1"  # type: ignore[union-attr]
    assert try_load_public_key(keys.public_key)  # what `flwr supernode register` reads
    with pytest.raises(FileExistsError):
        make_site_keys(tmp_path, "hospital-a")
    assert main(["--dir", str(tmp_path), "site", "hospital-a"]) == 2
    assert main(["--dir", str(tmp_path), "--force", "site", "hospital-a"]) == 0


def test_superlink_has_tls_and_node_auth_unless_insecure(tmp_path: Path):
    spec = CoordinatorSpec(
        out=tmp_path / "o", workspace=tmp_path / "w", sites=["a", "b"], certs=tmp_path / "c"
    )
    argv = superlink_command(spec)
    assert "--enable-supernode-auth" in argv and "--ssl-certfile" in argv and "--insecure" not in argv
    assert "--disable-runtime-dependency-installation" in argv and "--database" in argv
    assert spec.site_keys["b"] == tmp_path / "c" / "sites" / "b" / "node.pub"
    insecure = superlink_command(replace(spec, insecure=True))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    with pytest.raises(ConfigError, match="--sites"):
        CoordinatorSpec(out=tmp_path, workspace=tmp_path, sites=["a", "a"])
    with pytest.raises(ConfigError, match="not in --sites"):
        CoordinatorSpec(out=tmp_path, workspace=tmp_path, sites=["a"], site_keys={"z": tmp_path})


def deployable_site(tmp_path: Path, **changes) -> SiteConfig:
    data = tmp_path / "prepared"
    data.mkdir(exist_ok=True)
    (data / "shard").write_text("x")
    files = init_coordinator(tmp_path / "certs", hosts=["127.0.0.1"], force=True)
    keys = make_site_keys(tmp_path / "certs", "a", force=True)
    site = SiteConfig(
        name="a",
        data=[str(data)],
        base_model=str(data),
        tokenizer=str(data),
        state_dir=str(tmp_path / "state"),
        report_losses=False,
        coordinator="127.0.0.1:9092",
        ca_cert=str(files.ca_cert),
        node_key=str(keys.private_key),
    )
    return replace(site, **changes)


def test_site_preflight_names_what_is_missing(tmp_path: Path):
    check_deployment(deployable_site(tmp_path))
    cases = {
        "site.data": {"data": [str(tmp_path / "none")]},
        "site.node_key": {"node_key": str(tmp_path / "none.key")},
        "site.ca_cert": {"ca_cert": ""},
        "site.report_losses": {"report_losses": True},
        "site.coordinator": {"coordinator": "nohost"},
    }
    for name, change in cases.items():
        with pytest.raises(ConfigError, match=name):
            check_deployment(deployable_site(tmp_path, **change))
    loose = deployable_site(tmp_path)
    os.chmod(loose.node_key, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        check_deployment(loose)
    check_deployment(deployable_site(tmp_path, insecure=True, ca_cert="", node_key=""))


def test_supernode_command_uses_the_site_ca_and_key(tmp_path: Path):
    site = deployable_site(tmp_path)
    argv = supernode_command(site, tmp_path / "site.yaml")
    assert argv[argv.index("--root-certificates") + 1] == str(Path(site.ca_cert).resolve())
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(Path(site.node_key).resolve())
    assert argv[-1] == f'site-config="{tmp_path / "site.yaml"}"' and "--insecure" not in argv


def test_exit_classification_and_backoff():
    assert classify_exit("[code: 2004] Failed to activate SuperNode.") == NOT_REGISTERED
    assert classify_exit("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed") == UNTRUSTED
    assert classify_exit("Unable to parse the private key file.") == BAD_KEY
    assert classify_exit("Connection refused") == DROPPED
    assert [Backoff(initial=1, maximum=5).delay(k) for k in range(5)] == [1, 2, 4, 5, 5]


def test_a_coordinator_cannot_set_a_site_privacy():
    record = TrainInstructions(1, 2, 1e-3, 4, 1, 0).to_record()
    for key, value in {"noise-multiplier": 0.0, "epsilon-budget": 1e9, "privacy.enabled": False}.items():
        record[key] = value
    parsed = TrainInstructions.from_record(ConfigRecord(dict(record)))
    assert parsed == TrainInstructions(1, 2, 1e-3, 4, 1, 0)
    assert not {f for f in TrainInstructions.__dataclass_fields__ if "privacy" in f or "noise" in f}


def test_stop_tree_reaches_detached_grandchildren(tmp_path: Path):
    """Like flower-superexec: a grandchild in its own session survives a group kill, not stop_tree."""
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
        "time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not descendants(parent.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (grandchild,) = descendants(parent.pid)
    stop_tree(parent.pid, timeout=5)
    parent.wait(timeout=5)
    time.sleep(0.2)
    state = Path(f"/proc/{grandchild}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"
