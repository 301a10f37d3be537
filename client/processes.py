"""Supervision of Flower's executables for ``medim-server`` and ``medim-client``: start, log, stop, no orphans.

Flower's SuperLink and SuperNode start their helpers (``flower-superexec``, then ``flwr-serverapp`` /
``flwr-clientapp``) in new sessions, so a process-group signal does not reach them. The supervisor therefore
becomes a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``: orphans of its descendants become its children),
and :func:`stop_tree` signals every descendant it can find, waits, and kills what is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_CHILD_SUBREAPER = 36


class Shutdown(Exception):  # noqa: N818 - a request, not an error
    """Raised in the main thread by SIGTERM/SIGINT: stop the children and exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def shutdown_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Shutdown` in the main thread."""

    def handler(signum: int, _frame: object) -> None:
        raise Shutdown(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's executables: this interpreter's bin first (they start each other by name)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.update(extra or {})
    return env


def tool(name: str) -> str:
    """The path of a console script installed next to this interpreter (else the bare name, found on PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc``), parents before children."""
    if not Path("/proc").is_dir():
        return []
    children, out, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap() -> None:
    """Collect exit statuses of adopted orphans (we are their subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_tree(root: int, *, timeout: float = 10.0) -> list[int]:
    """SIGTERM ``root`` and all its descendants, wait up to ``timeout`` s, SIGKILL the rest; returns killed pids."""
    pids = [root, *descendants(root)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        pids = [p for p in {*pids, *descendants(root)} if _alive(p)]
        if not pids:
            return []
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    _reap()
    return pids


def kill_tree(root: int, *, timeout: float = 10.0) -> list[int]:
    """SIGKILL ``root`` and all its descendants at once, as a crash would: SIGSTOP first, so that none of them
    starts another process between listing and killing; waits until they are gone. Returns the descendants."""
    _signal(root, signal.SIGSTOP)
    family: list[int] = []
    while more := [p for p in descendants(root) if p not in family]:
        for pid in more:
            _signal(pid, signal.SIGSTOP)
        family += more
    for pid in [root, *family]:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in [root, *family]) and time.monotonic() < deadline:
        time.sleep(0.05)  # a zombie counts as gone: its parent reaps it (this function reaps nothing)
    return family


def stop_descendants(*, timeout: float = 10.0) -> list[int]:
    """Stop everything below this process (adopted orphans included); returns the pids that had to be killed."""
    killed: list[int] = []
    for pid in _children_map().get(os.getpid(), []):
        killed += stop_tree(pid, timeout=timeout)
    _reap()
    return killed


@dataclass
class Child:
    """A supervised executable: its output goes to ``log`` and, with ``echo``, to this process's stdout."""

    name: str
    argv: Sequence[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] | None = None
    proc: subprocess.Popen[str] | None = None
    _pump: threading.Thread | None = None

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            list(self.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(self.env) or None,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy, args=(self.proc.stdout,), daemon=True)
        self._pump.start()
        return self

    def _copy(self, stream: IO[str]) -> None:
        with self.log.open("a") as fh:
            for line in stream:
                fh.write(line)
                fh.flush()
                if self.echo is not None:
                    self.echo(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        code = self.proc.wait(timeout)
        if self._pump is not None:
            self._pump.join(timeout=5)
        return code

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """Stop it and everything it started; returns its exit code (None if it was never started)."""
        if self.proc is None:
            return None
        stop_tree(self.proc.pid, timeout=timeout)
        return self.wait(timeout=timeout)

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of its log."""
        if self._pump is not None and self.poll() is not None:
            self._pump.join(timeout=5)
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_tool(
    argv: Sequence[str], *, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess:
    """Run a short Flower CLI command to completion (output captured)."""
    return subprocess.run(
        list(argv), env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
