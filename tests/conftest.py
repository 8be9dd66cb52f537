"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LONG_ENV = "U2SERVE_LONG"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-long",
        action="store_true",
        help=f"also run the @pytest.mark.long tests (soak, thousands of fuzz examples); or set {LONG_ENV}=1",
    )


# Fixtures that need the model archives (and so a TorchServe, or a handler run from one): a test using any
# of them, directly or through another fixture, is in the "server" lane.
SERVER_FIXTURES = frozenset({"model_store", "server"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"long: minutes-long reliability runs (soak, long fuzz); skipped unless --run-long or {LONG_ENV}=1",
    )
    config.addinivalue_line(
        "markers",
        "gpu: the CUDA path (make gpu-check runs them on a GPU); without CUDA each runs its CPU path and warns so",
    )
    config.addinivalue_line(
        "markers",
        "server: needs the model archives, a TorchServe, a run of the networks or a package build (minutes); "
        "`pytest -m 'not server'` runs the pure tests alone",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the lane follows from the fixtures a test uses
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
    if config.getoption("--run-long") or os.environ.get(LONG_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"long run: pass --run-long or set {LONG_ENV}=1 (make soak)")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures tests measured with `record_property`: printed, never typed into the docs."""
    rows = [(r.nodeid, k, v) for r in terminalreporter.stats.get("passed", []) for k, v in r.user_properties]
    if rows:
        terminalreporter.section("measured figures")
        for nodeid, key, value in rows:
            terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {key} = {value}")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The authors' test images and published masks (data/u2net-reference/; U2SERVE_REFERENCE_DIR overrides)."""
    from tools import REFERENCE_ENV, reference_dir

    path = reference_dir()
    missing = [name for name in ("images", "u2netp_masks", "u2net_masks") if not (path / name).is_dir()]
    if missing:
        pytest.fail(f"the U²-Net reference data lacks {missing} at {path} (the repository's data/u2net-reference/, "
                    f"or ${REFERENCE_ENV})")  # fmt: skip
    return path


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_store() -> Path:
    """The archives `make archives` built; U2SERVE_MODEL_STORE overrides the folder."""
    store = Path(os.environ.get("U2SERVE_MODEL_STORE", ROOT / "model_store"))
    missing = [m for m in ("u2netp", "u2net") if not (store / f"{m}.mar").is_file()]
    if missing:
        pytest.fail(f"no {missing} archives in {store}: run `make archives` (make test does)")
    return store


@pytest.fixture(scope="session")
def unpacked_archive(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A function giving the folder `<model>.mar` is unpacked into, once per session (read-only for tests)."""
    import zipfile

    folders: dict[str, Path] = {}

    def unpack(model: str) -> Path:
        if model not in folders:
            folders[model] = tmp_path_factory.mktemp(f"{model}_mar")
            with zipfile.ZipFile(model_store / f"{model}.mar") as mar:
                mar.extractall(folders[model])
        return folders[model]

    return unpack


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: Path):
    """A real TorchServe serving u2netp and u2net on free ports, for the whole session."""
    from tools.torchserve import Ports, start

    srv = start(tmp_path_factory.mktemp("torchserve"), model_store, ["u2netp", "u2net"], Ports.free())
    try:
        srv.wait_ready(timeout=600)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def web(server):
    """The web gateway (`python -m u2serve.web`) on free ports (HTTP, gRPC) in front of the session's TorchServe."""
    from tools.torchserve import free_ports
    from tools.web import Web, start

    http_port, grpc_port = free_ports(2)
    gateway = Web(server.home, port=http_port, grpc_port=grpc_port)  # its gRPC front too
    # A generous deadline: the test machines are shared and slow; the 504 path has its own unit test.
    targets = ["--target", server.grpc_target, "--management-target", server.grpc_management_target, "--timeout", "300"]
    start(gateway, targets)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory, model_store: Path):
    """A real tritonserver (nvidia-pytriton's) serving both models' segment models and networks on free ports.

    The repository is written for this CPU (the u2serve_torchscript stand-in runs the network);
    the server runs under the same keys, loopback binding and backends as `make triton`.
    """
    from handler.triton import TritonSettings, export_from_archive
    from tools.triton import Ports, start

    repo = tmp_path_factory.mktemp("triton_repo")
    for name in ("u2netp", "u2net"):
        export_from_archive(name, repo, model_store / f"{name}.mar", TritonSettings.for_serving("cpu"))
    srv = start(tmp_path_factory.mktemp("triton"), repo, ["u2netp", "u2net"], Ports.free())
    try:
        srv.wait_ready(timeout=600)
        yield srv
    finally:
        srv.stop()
