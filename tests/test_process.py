"""tools/process.py on short Python processes: start detached, wait, read the log's tail, stop (and kill)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.process import ProcessError, ServerHandle, ServerProcess, alive

MARKER = "u2serve-process-test"


class Refused(ProcessError):
    """A tool's own error type."""


def proc(tmp_path: Path, marker: str = MARKER) -> ServerProcess:
    return ServerProcess("the test server", tmp_path / "run" / "test.pid", tmp_path / "logs" / "test.log",
                         marker=marker, error=Refused)  # fmt: skip


def python(code: str) -> list[str]:
    # The marker rides on the command line as the tools' servers' names do (org.pytorch.serve..., tritonserver).
    return [sys.executable, "-u", "-c", code, MARKER]


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_start_wait_tail_and_stop(tmp_path: Path) -> None:
    server = proc(tmp_path)
    flag = tmp_path / "ready"
    code = f"import pathlib, time\nprint('starting', flush=True)\npathlib.Path({str(flag)!r}).touch()\ntime.sleep(60)"
    child = server.start(python(code), cwd=tmp_path)
    server.wait_until(flag.exists, timeout=30, what="its flag file", interval=0.05)
    assert server.pid() == child.pid and server.alive()
    assert server.pid_file.read_text() == f"{child.pid}\n"
    assert os.getpgid(child.pid) == child.pid  # a session (and process group) of its own
    deadline = time.monotonic() + 10
    while "starting" not in server.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log_tail(1) == "starting"
    with pytest.raises(Refused, match=rf"the test server of this home is running already \(pid {child.pid}\)"):
        server.start(python("pass"))
    assert server.stop(timeout=10) is True
    assert child.wait(timeout=10) == -15  # SIGTERM ended it
    assert not server.pid_file.exists() and not server.alive() and server.stop() is False


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    server = proc(tmp_path)
    flag = tmp_path / "ready"
    code = (f"import pathlib, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"pathlib.Path({str(flag)!r}).touch()\ntime.sleep(60)")  # fmt: skip
    child = server.start(python(code))
    server.wait_until(flag.exists, timeout=30, what="its flag file", interval=0.05)
    started = time.monotonic()
    assert server.stop(timeout=1.0) is True
    assert time.monotonic() - started >= 1.0
    assert child.wait(timeout=10) == -9


def test_stop_ends_what_the_process_started(tmp_path: Path) -> None:
    # A server's workers (TorchServe's Python workers, Triton's stubs) share its process group.
    server = proc(tmp_path)
    grandchild_pid = tmp_path / "grandchild.pid"
    code = (f"import pathlib, subprocess, sys, time\n"
            f"g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"pathlib.Path({str(grandchild_pid)!r}).write_text(str(g.pid))\ntime.sleep(60)")  # fmt: skip
    server.start(python(code))
    server.wait_until(grandchild_pid.exists, timeout=30, what="its worker", interval=0.05)
    time.sleep(0.1)
    worker = int(grandchild_pid.read_text())
    assert alive(worker)
    server.stop(timeout=10)
    assert gone(worker)


def test_waiting_fails_with_the_log_tail_when_it_exits_or_time_runs_out(tmp_path: Path) -> None:
    server = proc(tmp_path)
    server.start(python("print('bad config: no models', flush=True)\nraise SystemExit(3)"))
    with pytest.raises(Refused, match=r"the test server exited while waiting for READY:\n.*bad config: no models"):
        server.wait_until(lambda: False, timeout=30, what="READY", interval=0.05)
    assert not server.alive()  # exited, not reaped: a zombie is not alive
    server.stop()
    server.start(python("print('slow', flush=True)\nimport time\ntime.sleep(60)"))
    try:
        with pytest.raises(Refused, match=r"the test server: waited 0 s for READY in vain:\n"):
            server.wait_until(lambda: False, timeout=0.2, what="READY", interval=0.05)
    finally:
        server.stop(timeout=5)


def test_a_pid_file_naming_another_program_is_stale(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{other.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # until its exec is done: a command line, and one without the marker
    try:
        server = proc(tmp_path)
        server.pid_file.parent.mkdir(parents=True)
        server.pid_file.write_text(f"{other.pid}\n")  # a reused pid: not our server
        assert server.pid() is None and not server.alive()
        assert server.stop() is False and alive(other.pid)
        assert not server.pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_process_in_our_own_group_is_stopped_alone(tmp_path: Path) -> None:
    # Started without a session of its own (as TorchServe servers before this module were): signalling its
    # group would signal this test run too; only the process is.
    child = subprocess.Popen(python("import time; time.sleep(60)"))
    server = proc(tmp_path)
    server.pid_file.parent.mkdir(parents=True)
    server.pid_file.write_text(str(child.pid))
    assert os.getpgid(child.pid) == os.getpgrp()
    assert server.stop(timeout=10) is True
    assert child.wait(timeout=10) == -15


def test_a_server_handle_answers_through_its_process(tmp_path: Path) -> None:
    class Handle(ServerHandle):
        stop_timeout = 2.0

        @property
        def process(self) -> ServerProcess:
            return proc(tmp_path)

    handle = Handle()
    assert handle.pid() is None and not handle.alive() and handle.log_tail() == "(no log)"
    child = handle.process.start(python("import time; time.sleep(60)"))
    assert handle.pid() == child.pid and handle.alive()
    assert handle.stop() is True and child.wait(timeout=10) == -15
