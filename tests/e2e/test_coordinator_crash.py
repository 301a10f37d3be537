"""The deployment's coordinator killed mid-round and restarted with ``--resume``, with real processes on loopback.

Two federations of the tiny preset run at the same time, over TLS with node authentication (medim-certs,
medim-server, two medim-client each), 3 rounds each, with their own ports, folders and site ledgers. DP is on
with seeded noise (``privacy.seed``, a test-only setting: a site's noise and Poisson sampling become a function
of (seed, round, site)):

1. uninterrupted;
2. killed: as soon as a site's privacy ledger shows the write-ahead of round 2, ``medim-server`` and everything it
   supervises get SIGKILL at once, as in a crash of the coordinator's host. That is flower-superlink, SuperExec,
   ServerApp and the log stream. At that point round 1 is checkpointed and round 2 is in flight.
   ``client.processes.kill_tree`` freezes the tree with SIGSTOP first, so that nothing new starts between listing
   and killing. The hospitals do what a hospital does: nothing. Their ``medim-client`` keeps running, and the
   SuperNode reconnects by itself once the coordinator is back (Flower retries with backoff, at most 20 s apart).
   The coordinator is restarted with the same command plus ``--resume``.

The resumed run's final trainable state equals the uninterrupted run's bitwise, and so does every round's global
state hash. This holds because a round's result depends only on the global state it starts from:

- each site reseeds its training and its DP noise from (seed, round, site);
- sampling is seeded by (seed, round);
- FedAvg sums the accepted sites in name order;
- the checkpoint holds the strategy state.

The round-2 work that the crash threw away is redone from the same round-1 state with the same seeds.

What differs is the privacy spend. A site counts a round's steps before it trains (write-ahead), so a site that
had started round 2 counts it twice: once for the killed run, once for the rerun. Each site's epsilon per round
never decreases and ends at least at the uninterrupted run's. That is conservative, never an undercount. The
audit log gets each ``round_end`` once and one ``resume`` entry, and its hash chain verifies.

A second test kills only medim-server's process group (``kill -9 -PGID``, or the OOM killer on the main process).
The SuperLink, SuperExec and ServerApp run in their own sessions, so they survive it, holding the port and
writing into ``--out``. The restarted medim-server must kill them before it starts its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
from safetensors.numpy import load_file

from client.config import SiteConfig, load_site_config
from client.processes import descendants, kill_tree
from medim.pipeline import Workspace
from medim.privacy_ledger import PrivacyLedger
from server.audit import verify_chain
from server.checkpoint import latest_path
from server.deploy import CoordinatorSpec, leftover_superlinks, stop_leftovers

ROUNDS = 3
DP_SEED = 0
# no generation; global evaluation only before round 1 and after the last round (the trained state is the same)
FL_OVERRIDES = json.dumps({"generation": {"every": 0}, "eval_every": ROUNDS})


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Path:
    """Workspace and certificates (CA, coordinator, the two sites)."""
    return make_federation(tmp_path_factory.mktemp("crash"), SITES)


def server_args(fed: Path, out: Path, port: int) -> list[str]:
    return [
        *[
            "--out",
            str(out),
            "--workspace",
            str(fed / "ws"),
            "--sites",
            *SITES,
            "--certs",
            str(fed / "certs"),
        ],
        *["--host", "127.0.0.1", "--port", str(port), "--fl", "tiny", "--rounds", str(ROUNDS)],
        *["--fl-overrides", FL_OVERRIDES],
    ]


class Federation:
    """One coordinator folder and its two hospitals (own state dirs, so own privacy ledgers), on loopback."""

    def __init__(self, fed: Path, name: str) -> None:
        self.fed, self.root = fed, fed / name
        self.out = self.root / "out"
        self.port, *self.node_ports = free_ports(1 + len(SITES))
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.sites: dict[str, SiteConfig] = {}
        self.servers = 0

    def start_server(self, *extra: str) -> subprocess.Popen:
        """medim-server (log ``server-N.log`` for its N-th start)."""
        self.servers += 1
        log = self.root / f"server-{self.servers}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.procs["server"] = start(
            tool("medim-server", *server_args(self.fed, self.out, self.port), *extra), log
        )
        self.logs[f"server-{self.servers}"] = log
        return self.procs["server"]

    def start_sites(self) -> None:
        ws = Workspace.load(self.fed / "ws")
        for name, node_port in zip(SITES, self.node_ports, strict=True):
            path = site_file(
                self.root,
                ws,
                name,
                port=self.port,
                node_port=node_port,
                certs=self.fed / "certs",
                dp_seed=DP_SEED,
            )
            self.sites[name] = load_site_config(path)
            self.logs[name] = self.root / f"{name}.log"
            self.procs[name] = start(tool("medim-client", "--site", str(path)), self.logs[name])

    def ledger_rounds(self, site: str) -> int:
        """Rounds in the site's own ledger file (a round counts from its write-ahead on)."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(self.sites[site].ledger_path.read_text())["rounds"])
        return 0

    def epsilon(self, site: str) -> float:
        """The site's spend according to its own ledger file."""
        privacy = self.sites[site].privacy
        ledger = PrivacyLedger.load(
            self.sites[site].ledger_path, accountant=privacy.accountant, delta=privacy.delta
        )
        return ledger.epsilon()

    def stop_sites(self) -> None:
        for name in SITES:
            self.procs[name].send_signal(signal.SIGTERM)
        for name in SITES:
            assert self.procs[name].wait(timeout=60) == 0, self.logs[name].read_text()[-3000:]

    def marks(self) -> list[str]:
        return [str(self.port), str(self.out), *[str(p) for p in self.node_ports]]

    def dump_logs(self) -> None:
        logs = [
            *sorted(self.logs.items()),
            *[(n, self.out / "logs" / n) for n in ("superlink.log", "run.log")],
        ]
        for name, path in logs:
            if path.is_file():
                print(f"===== {self.root.name} {name}\n{path.read_text(errors='replace')[-5000:]}")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait(timeout=30)


def wait_until(condition, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"medim-server exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def audit_events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]


def epsilons(out: Path, site: str) -> list[float]:
    """The site's reported epsilon after each round (server history, rounds 1..N)."""
    rounds = json.loads((out / "summary.json").read_text())["rounds"][1:]
    return [r["sites"][site]["metrics"]["epsilon"] for r in rounds]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # generous: minutes on an idle 2-core VM, much longer on a loaded one
def test_coordinator_killed_mid_round_resumes_to_the_uninterrupted_result(fed: Path):
    straight, crashed = Federation(fed, "straight"), Federation(fed, "crashed")
    begin, wall, timings = time.monotonic(), time.time(), {}
    try:
        for federation in (straight, crashed):
            federation.start_server()
            federation.start_sites()
        server = crashed.procs["server"]
        wait_until(
            lambda: max(crashed.ledger_rounds(s) for s in SITES) >= 2,
            timeout=900,
            proc=server,
            what="a site's write-ahead of round 2",
        )
        killed = kill_tree(server.pid)
        timings["killed"] = time.monotonic() - begin
        mid_round = [s for s in SITES if crashed.ledger_rounds(s) == 2]
        assert server.wait(timeout=30) == -signal.SIGKILL
        assert len(killed) >= 3  # SuperLink, SuperExec, ServerApp, log stream: all died with medim-server
        assert latest_path(crashed.out / "checkpoints").name == "round-0001"
        before = audit_events(crashed.out)
        assert [e["round"] for e in before if e["event"] == "round_end"] == [1]
        assert any(e["event"] == "round_start" and e["round"] == 2 for e in before)  # round 2 was in flight
        assert all(crashed.procs[s].poll() is None for s in SITES)  # the hospitals keep running

        server = crashed.start_server("--resume")
        assert server.wait(timeout=900) == 0
        timings["resumed_done"] = time.monotonic() - begin
        log = crashed.logs["server-2"].read_text()
        assert "resuming after round 1" in log and "killed flower-superlink" not in log
        assert straight.procs["server"].wait(timeout=900) == 0
        timings["uninterrupted_done"] = (straight.out / "summary.json").stat().st_mtime - wall
        for federation in (straight, crashed):
            federation.stop_sites()
    except BaseException:
        straight.dump_logs()
        crashed.dump_logs()
        raise
    finally:
        straight.kill_all()
        crashed.kill_all()
        time.sleep(1)
        survivors = flower_processes(straight.marks() + crashed.marks())
        assert not survivors, survivors
    print(f"seconds since both federations started: { {k: round(v, 1) for k, v in timings.items()} }")

    # the model: bitwise the uninterrupted run's, after every round
    assert latest_path(crashed.out / "checkpoints").name == f"round-{ROUNDS:04d}"
    a, b = (
        load_file(str(latest_path(f.out / "checkpoints") / "trainable.safetensors"))
        for f in (straight, crashed)
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    summaries = [json.loads((f.out / "summary.json").read_text()) for f in (straight, crashed)]
    hashes = [[r["global_sha256"] for r in s["rounds"]] for s in summaries]
    assert hashes[0] == hashes[1] and len(hashes[0]) == ROUNDS + 1
    assert all(r["accepted"] == SITES for s in summaries for r in s["rounds"][1:])

    # the audit log: every round ends once, one resume, the chain verifies
    events = audit_events(crashed.out)
    assert [e["round"] for e in events if e["event"] == "round_end"] == list(range(1, ROUNDS + 1))
    assert [e["event"] for e in events].count("resume") == 1
    assert verify_chain(crashed.out / "audit.jsonl").ok and summaries[1]["audit"]["ok"]

    # privacy: never decreasing, never below the uninterrupted spend (the killed round counts twice)
    assert mid_round
    for site in SITES:
        mine, theirs = epsilons(crashed.out, site), epsilons(straight.out, site)
        assert mine == sorted(mine) and mine[0] > 0 and mine[-1] >= theirs[-1]
        assert mine[0] == theirs[0]  # round 1 was not affected by the crash
        assert crashed.epsilon(site) >= straight.epsilon(site) == pytest.approx(theirs[-1])
        assert straight.ledger_rounds(site) == ROUNDS
        # a site that had started round 2 counts it again; one whose round-2 message arrived but had not started
        # training may count it or not; none counts more than the one extra round
        assert ROUNDS + (site in mid_round) <= crashed.ledger_rounds(site) <= ROUNDS + 1
        if site in mid_round:
            assert crashed.epsilon(site) > straight.epsilon(site)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_restarted_server_kills_what_a_killed_one_left_running(fed: Path, tmp_path: Path):
    out, (port,) = tmp_path / "out", free_ports(1)
    logs = [tmp_path / "server-1.log", tmp_path / "server-2.log"]
    first = start(tool("medim-server", *server_args(fed, out, port)), logs[0])
    procs = [first]
    try:
        # the ServerApp has written round 0 and waits at the roll call (no site is started here)
        wait_for(logs[0], "round 0", 300, first)
        os.killpg(first.pid, signal.SIGKILL)  # medim-server's process group only
        assert first.wait(timeout=30) == -signal.SIGKILL
        time.sleep(1)
        left = flower_processes([str(out)])
        assert any("flower-superlink" in p for p in left), left  # it survives medim-server, with its children

        second = start(tool("medim-server", *server_args(fed, out, port), "--resume"), logs[1])
        procs.append(second)
        wait_for(logs[1], "resuming after round 0", 300, second)
        log = logs[1].read_text()
        assert "killed flower-superlink" in log and "SuperLink on 127.0.0.1" in log
        events = [e["event"] for e in audit_events(out)]
        assert events.count("start") == 1 and events.count("resume") == 1  # one writer at a time
        assert verify_chain(out / "audit.jsonl").ok
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 1  # interrupted: continue with --resume
    except BaseException:
        for path in [*logs, out / "logs" / "superlink.log"]:
            if path.is_file():
                print(f"===== {path.name}\n{path.read_text(errors='replace')[-5000:]}")
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait(timeout=30)
        time.sleep(1)
        survivors = flower_processes([str(out), str(port)])
        for entry in survivors:  # fail below, but leave nothing behind
            kill_tree(int(entry.split(":")[0]))
    assert not survivors, survivors


def test_leftover_superlinks_are_found_by_their_database_and_killed_with_their_children(tmp_path: Path):
    """No Flower: a stand-in ``flower-superlink`` (a Python script of that name) that starts a child in its own
    session, like the SuperExec; one for this ``--out`` and one for another folder, which must be left alone."""
    script = tmp_path / "bin" / "flower-superlink"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, time\n"
        f"subprocess.Popen([{sys.executable!r}, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    script.chmod(0o755)
    spec = CoordinatorSpec(out=tmp_path / "out", workspace=tmp_path, sites=["a"], insecure=True)
    other = tmp_path / "other" / "state" / "superlink.db"
    procs = [
        subprocess.Popen(
            [str(script), "--database", str(db)], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        for db in (spec.state / "superlink.db", other)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"
        assert leftover_superlinks(spec) == [procs[0].pid]
        child = descendants(procs[0].pid)
        said: list[str] = []
        stop_leftovers(spec, said.append)
        assert procs[0].wait(timeout=10) == -signal.SIGKILL and len(child) == 1
        with contextlib.suppress(FileNotFoundError):  # gone, or a zombie waiting for init
            assert Path(f"/proc/{child[0]}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert said == [
            f"medim-server: killed flower-superlink (pid {procs[0].pid}) and 1 processes it started, "
            f"left running for {spec.out} by an earlier medim-server that was killed"
        ]
        assert procs[1].poll() is None and leftover_superlinks(spec) == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait(timeout=10)
