"""The servers' processes (TorchServe, tritonserver, the web gateway), each known by its pid file and its log.

One `ServerProcess` starts a command detached (its own session, output to its log file, its pid to its pid
file), says whether it is alive, waits until a readiness check holds (failing with its log's tail), and
stops it: SIGTERM to its process group, SIGKILL to the group after a grace period, the pid file removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

_PROC = Path("/proc")


class ProcessError(RuntimeError):
    """A server's process could not be started, did not become ready, or could not be stopped."""


def alive(pid: int) -> bool:
    """Whether process `pid` exists, is this user's, and has not exited (a zombie, exited but not reaped, has)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        state = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return not _PROC.is_dir()  # gone in between; without /proc, kill(0) is all there is to know
    return state not in ("Z", "X")


def runs(pid: int, marker: str) -> bool:
    """Whether `pid`'s command line holds `marker`: a pid file naming a reused pid names another program.

    An empty command line is a process just starting (its exec not done yet) or one that exited (a zombie,
    which `alive` tells apart): not another program.
    """
    try:
        cmdline = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return not _PROC.is_dir()
    return not cmdline or marker.encode() in cmdline


def tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a log file, or "(no log)"."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    name: str,
    what: str,
    is_alive: Callable[[], bool],
    log_tail: Callable[[], str],
    interval: float = 0.5,
    error: type[ProcessError] = ProcessError,
) -> None:
    """Polls `ready` every `interval` s until it holds; raises `error` with the log's tail when the process
    exits first or `timeout` s pass. `what` names what is awaited ("an answer on /healthz")."""
    deadline = time.monotonic() + timeout
    while True:
        if not is_alive():
            raise error(f"{name} exited while waiting for {what}:\n{log_tail()}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise error(f"{name}: waited {timeout:.0f} s for {what} in vain:\n{log_tail()}")
        time.sleep(interval)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM to `pid`'s process group, SIGKILL to it after `timeout` s if `pid` still runs.

    Whatever of the group outlives `pid` (a worker its server did not reap) is killed too. The group
    of this very process is never signalled (a server started without a session of its own shares it):
    then only `pid` is.
    """
    try:
        group: int | None = os.getpgid(pid)
    except OSError:
        return
    if group == os.getpgrp():
        group = None
    _signal(pid, group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal(pid, group, signal.SIGKILL)


def _signal(pid: int, group: int | None, sig: signal.Signals) -> None:
    try:
        if group is not None:
            os.killpg(group, sig)
        elif alive(pid):
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class ServerProcess:
    """A server's process, known by its pid file (written here, or by the server itself) and its log file.

    Attributes:
        name: What the messages call it ("TorchServe", "tritonserver", "the web gateway").
        pid_file: Where its pid is.
        log_file: Where its output goes (`start`) or where it logs; `log_tail` reads it.
        marker: A string its command line holds; a pid file naming another program (a reused pid) names none.
        error: The exception type raised, a ProcessError (each tool has its own).
    """

    name: str
    pid_file: Path
    log_file: Path
    marker: str = ""
    error: type[ProcessError] = ProcessError

    def pid(self) -> int | None:
        """The pid in the pid file, if it is still this server's process."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if not self.marker or runs(pid, self.marker) else None

    def alive(self) -> bool:
        pid = self.pid()
        return pid is not None and alive(pid)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

    def check_not_running(self) -> None:
        """Raises `error` when a process of this pid file runs: one server per home."""
        if self.alive():
            raise self.error(f"{self.name} of this home is running already (pid {self.pid()}); stop it first "
                             "(`make stop`)")  # fmt: skip

    def start(
        self, cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Starts `cmd` detached and returns at once; `wait_until` then waits for it to be ready.

        Its own session (so `stop` ends it with whatever it starts), no stdin, stdout and stderr to the log
        file (a pipe would outlive the caller), its pid to the pid file.
        """
        self.check_not_running()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("w") as log:
            proc = subprocess.Popen(
                list(cmd), cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
        """Until `ready()` holds; raises `error` with the log's tail if the process exits first or time runs out."""
        wait_until(ready, timeout=timeout, name=self.name, what=what, is_alive=self.alive, log_tail=self.log_tail,
                   interval=interval, error=self.error)  # fmt: skip

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM to its process group, SIGKILL after `timeout` s; the pid file removed. Whether it was running."""
        pid = self.pid()
        running = pid is not None and alive(pid)
        if pid is not None and running:
            terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return running


class ServerHandle:
    """A tool's server object (TorchServe's, Triton's, the gateway's): its pid, liveness, log tail and stop,
    all through its `process`; `stop_timeout` is its grace period between SIGTERM and SIGKILL."""

    stop_timeout: ClassVar[float] = 30.0

    @property
    def process(self) -> ServerProcess:
        raise NotImplementedError

    def pid(self) -> int | None:
        """The server's pid, if its pid file names a process of it."""
        return self.process.pid()

    def alive(self) -> bool:
        return self.process.alive()

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM to the server's process group, SIGKILL after `timeout` s (default `stop_timeout`); the pid
        file removed. Whether it was running."""
        return self.process.stop(self.stop_timeout if timeout is None else timeout)
