"""The coordinator's deployment: ``flower-superlink`` with TLS and node authentication, site registration, the
medim run (``flwr run`` against the local SuperLink), progress, summary and a clean shutdown.

Files under ``--out`` (besides what the ServerApp writes: ``checkpoints/``, ``audit.jsonl``)::

    state/superlink.db     SuperLink state (registered sites, runs): persists across restarts and --resume
    state/flwr/            FLWR_HOME of the coordinator's flwr CLI (config.toml: the ``medim`` connection)
    state/run-config.toml  the run config submitted with ``flwr run``
    logs/superlink.log     SuperLink (and ServerApp process) output;  logs/run.log  the run's log stream
    summary.json, report.html   written when the run completes (same schema as medim-simulate, ``sim`` null)
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.processes import Child, kill_tree, run_tool, tool, tool_env
from medim.config import ConfigError
from server.app import CHECKPOINTS, ServerPlan
from server.certs import coordinator_files, site_keys
from server.checkpoint import latest_path
from simulation.summary import write_outputs

CONNECTION = "medim"
APP_DIR = Path(__file__).resolve().parents[1]
Say = Callable[[str], None]


@dataclass
class CoordinatorSpec:
    """One ``medim-server`` invocation. ``site_keys`` maps a site to its public key (default from ``certs``)."""

    out: Path
    workspace: Path
    sites: list[str]
    certs: Path = Path("certs")
    host: str = "127.0.0.1"
    port: int = 9092
    fl_preset: str = "small"
    rounds: int | None = None
    fl_overrides: dict[str, Any] = field(default_factory=dict)
    diffusion: str = "default"
    resume: bool = False
    insecure: bool = False
    site_keys: dict[str, Path] = field(default_factory=dict)
    app_dir: Path = APP_DIR
    ready_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"--sites={self.sites} is invalid: one or more distinct site names")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port={self.port} is invalid: a TCP port")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"--rounds={self.rounds} is invalid: >= 1")
        unknown = sorted(set(self.site_keys) - set(self.sites))
        if unknown:
            raise ConfigError(f"--site-key for {unknown}: not in --sites")
        self.out, self.workspace, self.certs = (
            self.out.resolve(),
            self.workspace.resolve(),
            self.certs.resolve(),
        )
        for site in self.sites:
            self.site_keys.setdefault(site, site_keys(self.certs, site).public_key)

    @property
    def state(self) -> Path:
        return self.out / "state"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def address(self) -> str:
        """Where the local flwr CLI reaches the SuperLink (loopback when it binds every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def run_config(self) -> dict[str, str | bool]:
        """The ServerApp's run config (keys of ``[tool.flwr.app.config]``)."""
        overrides = {**self.fl_overrides, **({} if self.rounds is None else {"rounds": self.rounds})}
        return {
            "out": str(self.out),
            "workspace": str(self.workspace),
            "sites": ",".join(self.sites),
            "fl-preset": self.fl_preset,
            "fl-overrides": json.dumps(overrides),
            "diffusion": self.diffusion,
            "resume": self.resume,
            "progress": True,
        }


def check_coordinator(spec: CoordinatorSpec) -> None:
    """Raise ConfigError naming what is missing before anything starts."""
    if not (spec.app_dir / "pyproject.toml").is_file():
        raise ConfigError(
            f"{spec.app_dir} has no pyproject.toml: medim-server runs from the medim source tree"
        )
    if not (spec.workspace / "workspace.json").is_file():
        raise ConfigError(f"--workspace {spec.workspace} is not a bootstrapped workspace (no workspace.json)")
    if latest_path(spec.out / CHECKPOINTS) is not None and not spec.resume:
        raise ConfigError(
            f"{spec.out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    if spec.resume and latest_path(spec.out / CHECKPOINTS) is None:
        raise ConfigError(f"--resume: {spec.out / CHECKPOINTS} has no checkpoint to resume from")
    if spec.insecure:
        return
    files = coordinator_files(spec.certs)
    for path in (files.ca_cert, files.server_cert, files.server_key):
        if not path.is_file():
            raise ConfigError(
                f"{path} not found: run `medim-certs --dir {spec.certs} init --host HOST` first "
                "(or --insecure for a plaintext test on loopback)"
            )
    for site, key in spec.site_keys.items():
        if not key.is_file():
            raise ConfigError(f"site {site}: public key {key} not found (the site sends its node.pub)")


def superlink_command(spec: CoordinatorSpec) -> list[str]:
    """``flower-superlink``: TLS + node authentication unless insecure, persistent state, no runtime installs."""
    argv = [tool("flower-superlink"), "--host", spec.host or "0.0.0.0", "--port", str(spec.port)]
    argv += ["--database", str(spec.state / "superlink.db"), "--disable-runtime-dependency-installation"]
    if spec.insecure:
        return [*argv, "--insecure"]
    files = coordinator_files(spec.certs)
    return [
        *argv,
        "--ssl-certfile",
        str(files.server_cert),
        "--ssl-keyfile",
        str(files.server_key),
        "--ssl-ca-certfile",
        str(files.ca_cert),
        "--enable-supernode-auth",
    ]


def _toml_value(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def write_flwr_files(spec: CoordinatorSpec) -> dict[str, str]:
    """FLWR_HOME/config.toml (the ``medim`` connection) and the run-config file; returns the CLI environment."""
    home = spec.state / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
    lines.append(f"address = {json.dumps(spec.address)}")
    if spec.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(coordinator_files(spec.certs).ca_cert))}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    run_config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in spec.run_config().items())
    (spec.state / "run-config.toml").write_text(run_config + "\n")
    return tool_env({"FLWR_HOME": str(home)})


def wait_ready(spec: CoordinatorSpec, superlink: Child) -> None:
    """Until the SuperLink answers ``/health``; RuntimeError with its log tail if it exits or times out."""
    context = None
    if not spec.insecure:
        context = ssl.create_default_context(cafile=str(coordinator_files(spec.certs).ca_cert))
    host, _, port = spec.address.rpartition(":")
    deadline = time.monotonic() + spec.ready_timeout_s
    while time.monotonic() < deadline:
        if superlink.poll() is not None:
            raise RuntimeError(f"flower-superlink exited ({superlink.poll()}):\n{superlink.tail()}")
        conn: http.client.HTTPConnection = (
            http.client.HTTPConnection(host.strip("[]"), int(port), timeout=2)
            if context is None
            else http.client.HTTPSConnection(host.strip("[]"), int(port), timeout=2, context=context)
        )
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.5)
    raise RuntimeError(f"flower-superlink not ready after {spec.ready_timeout_s}s:\n{superlink.tail()}")


def leftover_superlinks(spec: CoordinatorSpec) -> list[int]:
    """Pids of ``flower-superlink`` processes serving this ``--out``'s database.

    The SuperLink runs in its own session, so a medim-server killed with SIGKILL (the OOM killer,
    ``kill -9``) leaves it running, with its SuperExec and ServerApp: they hold the port and go on writing
    checkpoints and the audit log into ``--out``."""
    proc, database, found = Path("/proc"), str(spec.state / "superlink.db"), []
    for entry in os.listdir(proc) if proc.is_dir() else []:
        if not entry.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (proc / entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        named = any(Path(a).name == "flower-superlink" for a in argv[:2])
        if named and any(a == "--database" and b == database for a, b in zip(argv, argv[1:], strict=False)):
            found.append(int(entry))
    return found


def stop_leftovers(spec: CoordinatorSpec, say: Say) -> None:
    """SIGKILL what an earlier, killed medim-server left running for ``--out`` (see :func:`leftover_superlinks`),
    so that exactly one ServerApp writes there: it dies as it would have with its medim-server, and the run
    continues from the last checkpoint (``--resume``)."""
    for pid in leftover_superlinks(spec):
        family = kill_tree(pid)
        say(
            f"medim-server: killed flower-superlink (pid {pid}) and {len(family)} processes it started, "
            f"left running for {spec.out} by an earlier medim-server that was killed"
        )


def _json_output(stdout: str) -> dict[str, Any]:
    start = stdout.find("{")
    if start < 0:
        raise RuntimeError(f"flwr printed no JSON: {stdout[-2000:]}")
    return json.loads(stdout[start:])


def flwr(env: dict[str, str], *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """``flwr ARGS --format json`` against the ``medim`` connection; its JSON answer."""
    proc = run_tool([tool("flwr"), *args, "--format", "json"], env=env, timeout=timeout)
    return _json_output(proc.stdout + proc.stderr)


def register_sites(spec: CoordinatorSpec, env: dict[str, str], say: Say) -> None:
    """Register every site's public key (a key registered before, e.g. on --resume, is fine)."""
    for site, key in spec.site_keys.items():
        answer = flwr(env, "supernode", "register", str(key), CONNECTION, "--name", site)
        if answer.get("success"):
            say(f"medim-server: registered site {site} (node {answer.get('node-id', '?')})")
        elif "already in use" in str(answer.get("error-message", "")):
            say(f"medim-server: site {site} was registered before")
        else:
            raise RuntimeError(f"registering site {site} ({key}) failed: {answer.get('error-message')}")


def stop_stale_runs(env: dict[str, str], say: Say) -> None:
    """Stop runs a previous, interrupted medim-server left unfinished in the state database."""
    for run in flwr(env, "ls", CONNECTION).get("runs", []):
        if not str(run.get("status", "")).startswith("finished"):
            flwr(env, "stop", str(run["run-id"]), CONNECTION)
            say(f"medim-server: stopped stale run {run['run-id']} ({run.get('status')})")


def submit_run(spec: CoordinatorSpec, env: dict[str, str]) -> int:
    """``flwr run APP medim --run-config FILE``: the run's id."""
    answer = flwr(
        env,
        "run",
        str(spec.app_dir),
        CONNECTION,
        "--run-config",
        str(spec.state / "run-config.toml"),
        timeout=300,
    )
    if not answer.get("success"):
        raise RuntimeError(f"flwr run failed: {answer.get('error-message')}")
    return int(answer["run-id"])


def run_status(env: dict[str, str], run_id: int) -> str:
    """``pending``, ``starting``, ``running`` or ``finished:<completed|failed|stopped>``."""
    runs = flwr(env, "ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
    return str(runs[0]["status"]) if runs else "unknown"


def write_summary(spec: CoordinatorSpec, *, wall_seconds: float) -> Path:
    """summary.json + report.html from the final checkpoint and the audit log (simulation's writer)."""
    plan = ServerPlan.from_run_config(spec.run_config())
    return write_outputs(spec.out, sim=None, plan=plan, sites={}, wall_seconds=wall_seconds)


@dataclass
class Coordinator:
    """The running pieces, so that a signal handler's caller can stop them (see :meth:`shutdown`)."""

    spec: CoordinatorSpec
    say: Say
    env: dict[str, str] = field(default_factory=dict)
    superlink: Child | None = None
    stream: Child | None = None
    run_id: int | None = None
    finished: bool = False

    def run(self, *, poll_s: float = 3.0) -> Path:
        """Start, register, submit, follow the run to its end; the summary path (RuntimeError if it failed)."""
        spec, start = self.spec, time.perf_counter()
        spec.logs.mkdir(parents=True, exist_ok=True)
        self.env = write_flwr_files(spec)
        stop_leftovers(spec, self.say)
        self.superlink = Child("superlink", superlink_command(spec), spec.logs / "superlink.log", self.env)
        self.superlink.start()
        wait_ready(spec, self.superlink)
        self.say(
            f"medim-server: SuperLink on {spec.host}:{spec.port} ({'PLAINTEXT' if spec.insecure else 'TLS'})"
        )
        if not spec.insecure:
            register_sites(spec, self.env, self.say)
        stop_stale_runs(self.env, self.say)
        self.run_id = submit_run(spec, self.env)
        self.say(f"medim-server: run {self.run_id} submitted; waiting for sites {', '.join(spec.sites)}")
        self.stream = Child(
            "log",
            [tool("flwr"), "log", str(self.run_id), CONNECTION, "--stream"],
            spec.logs / "run.log",
            self.env,
        )
        self.stream.echo = self.say
        self.stream.start()
        status = run_status(self.env, self.run_id)
        while not status.startswith("finished"):
            if self.superlink.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited ({self.superlink.poll()}):\n{self.superlink.tail()}"
                )
            time.sleep(poll_s)
            status = run_status(self.env, self.run_id)
        self.finished = True
        if status != "finished:completed":
            raise RuntimeError(f"run {self.run_id} ended {status}; see {spec.logs / 'run.log'}")
        return write_summary(spec, wall_seconds=time.perf_counter() - start)

    def shutdown(self) -> None:
        """Stop an unfinished run, then the log stream and the SuperLink with everything it started."""
        if self.run_id is not None and not self.finished and self.superlink and self.superlink.poll() is None:
            try:
                flwr(self.env, "stop", str(self.run_id), CONNECTION, timeout=20)
            except (RuntimeError, OSError, ValueError) as err:
                self.say(f"medim-server: could not stop run {self.run_id}: {err}")
        for child in (self.stream, self.superlink):
            if child is not None:
                child.stop(timeout=10)
