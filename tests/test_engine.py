"""Engines: each one's d0 equals eager PyTorch's; the fallback to TorchScript; MNN without a network; the engine
benchmark's smoke run."""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from handler import cpu, precision, weights
from handler import engine as E
from handler.model import U2Net, U2NetD0
from handler.settings import HandlerSettings, SettingsError

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# U2NETP at its served size with the authors' weights; U2NET's random weights at a small size keep CI fast.
CASES = {"u2netp": 320, "u2net": 64}


def _model(name: str) -> U2Net:
    if name == "u2net":
        return weights.random_weights("u2net", 0).model
    try:
        return weights.published("u2netp").model
    except weights.WeightsError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=sorted(CASES))
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> tuple[U2Net, Path, str, int]:
    """A model with every engine's file in one folder: U2NETP's from the archive `make archives` built (the
    authors' weights, exported by handler.build), U2NET's random stand-in exported here as the build would."""
    name, size = request.param, CASES[request.param]
    model = _model(name)
    directory = tmp_path_factory.mktemp(name)
    engines = [e for e in E.ENGINES if e != E.TORCHSCRIPT_BF16 or name in precision.PLANS]
    if name == "u2netp":
        with zipfile.ZipFile(model_store / "u2netp.mar") as mar:
            for file in {E.file_name(e, name) for e in engines}:
                mar.extract(file, directory)
    else:
        for engine in engines:
            E.export(engine, model, directory, name, size)
    return model, directory, name, size


FP32_ENGINES = sorted(set(E.ENGINES) - {E.TORCHSCRIPT_BF16})
# The engines whose streams run images side by side; MNN's binding holds the GIL through a forward.
STREAMED = sorted(set(FP32_ENGINES) - {E.MNN})
needs_native_bf16 = pytest.mark.skipif(not precision.native_bf16(), reason="this CPU has no native bf16")


@pytest.fixture
def avx2_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU taken for one where MNN serves: an Intel CPU with AVX-512 skips it for OpenVINO."""
    monkeypatch.setattr(cpu, "intel_avx512", lambda: False)


@pytest.mark.parametrize("engine", FP32_ENGINES)
def test_engine_output_equals_eager(engine: str, archive: tuple[U2Net, Path, str, int], avx2_only: None) -> None:
    model, directory, name, size = archive
    loaded = E.load(engine, directory, name, CPU, threads=2)
    assert loaded.name == engine
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3):
        x = torch.rand(n, 3, size, size, generator=gen)
        with torch.no_grad():
            want = U2NetD0(model).eval()(x)
        got = loaded(x)
        assert got.shape == (n, 1, size, size)
        assert got.dtype == torch.float32
        assert float((got - want).abs().max()) <= 1e-4


@needs_native_bf16
def test_bf16_engine_stays_close_to_eager_fp32_and_runs_any_batch(
    archive: tuple[U2Net, Path, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, directory, name, size = archive
    # Whether it is fast here (AMX) is the chain's business; its numbers are checked wherever bf16 is native.
    monkeypatch.setattr(cpu, "amx", lambda: True)
    if name not in precision.PLANS:  # no plan, so no bf16 file: the worker serves the next engine
        assert not (directory / f"{name}.bf16.pt").exists()
        assert E.load(E.TORCHSCRIPT_BF16, directory, name, CPU).name == E.runnable(E.MNN, CPU)
        return
    loaded = E.load(E.TORCHSCRIPT_BF16, directory, name, CPU, threads=2)
    assert isinstance(loaded, E.TorchScriptBF16Engine) and loaded.name == E.TORCHSCRIPT_BF16
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, size, size, generator=gen)
    with torch.no_grad():
        want = U2NetD0(model).eval()(x)
    got = loaded(x)
    assert got.shape == (3, 1, size, size) and got.dtype == torch.float32 and got.is_contiguous()
    # bf16 moves d0 a little (the accuracy gate on real images is in test_serve.py and test_precision.py);
    # batch items stay independent: image 2 alone equals image 2 in the batch.
    assert 0 < float((got - want).abs().mean()) < 0.01
    assert torch.equal(loaded(x[2:3]), got[2:3])
    # Two streams (handler.streams: 2): images 0 and 1 side by side on one thread each, image 2 on both;
    # single-threaded sums may round apart in the last bits.
    sided = E.load(E.TORCHSCRIPT_BF16, directory, name, CPU, threads=2, streams=2)
    assert sided.stream_count == 2 and float((sided(x) - got).abs().max()) < 1e-6


@pytest.mark.parametrize("engine", STREAMED)
def test_fp32_engines_run_side_by_side_when_asked(engine: str, archive: tuple[U2Net, Path, str, int]) -> None:
    _, directory, name, size = archive
    one, two = (E.load(engine, directory, name, CPU, threads=2, streams=n) for n in (1, 2))
    assert (one.stream_count, two.stream_count) == (1, 2)
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    assert float((one(x) - two(x)).abs().max()) < 1e-5


def test_streams_run_images_side_by_side_on_a_share_of_the_threads_and_the_rest_on_all() -> None:
    torch.set_num_threads(2)
    seen: list[tuple[str, int, float]] = []

    def runner(kind: str) -> E.ImageRun:
        def run(image: torch.Tensor) -> torch.Tensor:
            seen.append((kind, torch.get_num_threads(), float(image)))
            return image * 10

        return run

    streams = E.Streams(2, E._torch_threads, count=2)
    x = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1)
    out = streams.run(x, runner("wide"), runner("narrow"))
    assert out.flatten().tolist() == [0, 10, 20, 30, 40]  # in order
    # four images on the two single-threaded streams, the odd one out on both threads of the caller
    assert sorted((kind, threads) for kind, threads, _ in seen) == [("narrow", 1)] * 4 + [("wide", 2)]
    assert [value for kind, _, value in seen if kind == "wide"] == [4.0]
    assert torch.get_num_threads() == 2  # the caller's own count is untouched
    seen.clear()
    assert streams.run(x[:1], runner("wide"), runner("narrow")).flatten().tolist() == [0]
    assert seen == [("wide", 2, 0.0)]
    # four threads, two streams: two threads each
    seen.clear()
    wider = E.Streams(4, E._torch_threads, count=2)
    assert (wider.count, wider.share) == (2, 2)
    torch.set_num_threads(4)
    wider.run(x, runner("wide"), runner("narrow"))
    assert sorted((kind, threads) for kind, threads, _ in seen) == [("narrow", 2)] * 4 + [("wide", 4)]
    torch.set_num_threads(2)
    # one stream (the default), or one thread: all on the caller's thread
    for one_by_one in (E.Streams(2), E.Streams(1, count=2)):
        assert one_by_one.count == 1
        seen.clear()
        one_by_one.run(x[:3], runner("wide"), runner("narrow"))
        assert [kind for kind, _, _ in seen] == ["wide"] * 3


def test_streams_is_a_handler_setting_of_at_least_one() -> None:
    assert HandlerSettings.from_yaml(None).streams == 1
    assert HandlerSettings.from_yaml({"streams": 2, "engine": "torchscript-bf16"}).streams == 2
    with pytest.raises(SettingsError, match=r"handler\.streams=0"):
        HandlerSettings.from_yaml({"streams": 0})


def test_streams_are_at_most_one_per_thread(archive: tuple[U2Net, Path, str, int], avx2_only: None) -> None:
    _, directory, name, _ = archive
    assert {e: E.load(e, directory, name, CPU, threads=1, streams=2).stream_count for e in FP32_ENGINES} == {
        e: 1 for e in FP32_ENGINES
    }


def test_bf16_runs_with_amx_and_falls_back_to_mnn_and_to_openvino_on_intel_avx512(
    archive: tuple[U2Net, Path, str, int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, directory, name, _ = archive
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu, "amx", lambda: True)
    assert E.runnable(E.TORCHSCRIPT_BF16, CPU) == E.TORCHSCRIPT_BF16  # a Xeon with AMX
    # AVX512_BF16 without AMX (AMD's Zen 4): native bf16, yet the fp32 engines lead.
    monkeypatch.setattr(cpu, "amx", lambda: False)
    monkeypatch.setattr(cpu, "intel_avx512", lambda: False)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        assert E.load(E.TORCHSCRIPT_BF16, directory, name, CPU).name == E.MNN
    assert "engine torchscript-bf16 cannot run (this CPU has no AMX" in caplog.text
    monkeypatch.setattr(precision, "native_bf16", lambda: False)  # emulated bf16 (an AVX2-only CPU)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        assert E.load(E.TORCHSCRIPT_BF16, directory, name, CPU).name == E.MNN
    assert "engine torchscript-bf16 cannot run (this CPU has no native bf16" in caplog.text
    monkeypatch.setattr(cpu, "intel_avx512", lambda: True)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        assert E.load(E.TORCHSCRIPT_BF16, directory, name, CPU).name == E.OPENVINO
    assert "engine mnn cannot run (this Intel CPU has AVX-512, where OpenVINO's fp32 outruns MNN" in caplog.text
    assert E.runnable(E.TORCHSCRIPT_BF16, CPU) == E.OPENVINO


def test_bf16_falls_back_through_mnn_openvino_and_onnxruntime_to_torchscript(
    archive: tuple[U2Net, Path, str, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    avx2_only: None,
) -> None:
    _, directory, name, _ = archive
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "MNN", None)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        assert E.load(E.TORCHSCRIPT_BF16, directory, name, CPU).name == E.OPENVINO
    assert "MNN cannot be imported" in caplog.text
    monkeypatch.setitem(sys.modules, "openvino", None)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        assert E.load(E.TORCHSCRIPT_BF16, directory, name, CPU).name == E.ONNXRUNTIME
    assert "openvino cannot be imported" in caplog.text
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        loaded = E.load(E.TORCHSCRIPT_BF16, directory, name, CPU)
    assert loaded.name == E.TORCHSCRIPT
    assert "trying onnxruntime" in caplog.text and "trying torchscript" in caplog.text


def test_engine_chains_end_in_torchscript() -> None:
    assert E.chain(E.TORCHSCRIPT_BF16) == [E.TORCHSCRIPT_BF16, E.MNN, E.OPENVINO, E.ONNXRUNTIME, E.TORCHSCRIPT]
    assert E.chain(E.MNN) == [E.MNN, E.OPENVINO, E.ONNXRUNTIME, E.TORCHSCRIPT]
    assert E.chain(E.OPENVINO) == [E.OPENVINO, E.ONNXRUNTIME, E.TORCHSCRIPT]
    assert E.chain("onnxruntime") == ["onnxruntime", E.TORCHSCRIPT]
    assert E.chain(E.TORCHSCRIPT) == [E.TORCHSCRIPT]
    assert E.ENGINES[E.TORCHSCRIPT_BF16].unavailable(torch.device("cuda")) == "it runs on cpu only, not cuda"


def test_bf16_export_needs_a_variant_with_a_plan(tmp_path: Path) -> None:
    with pytest.raises(E.EngineError, match=r"no bf16 plan for 'u2net'"):
        E.export(E.TORCHSCRIPT_BF16, weights.random_weights("u2net", 0).model, tmp_path, "u2net", 64)


def test_falls_back_to_torchscript_when_onnxruntime_cannot_be_imported(
    archive: tuple[U2Net, Path, str, int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, directory, name, _ = archive
    # A None entry in sys.modules makes `import onnxruntime` raise ImportError.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        loaded = E.load("onnxruntime", directory, name, CPU)
    assert isinstance(loaded, E.TorchScriptEngine)
    assert "onnxruntime cannot be imported" in caplog.text


def test_falls_back_to_torchscript_when_the_archive_has_no_onnx(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = weights.random_weights("u2net", 0).model
    E.export(E.TORCHSCRIPT, model, tmp_path, "u2net", 64)
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        loaded = E.load("onnxruntime", tmp_path, "u2net", CPU)
    assert loaded.name == E.TORCHSCRIPT
    assert "no u2net.onnx" in caplog.text


def test_onnxruntime_is_cpu_only() -> None:
    assert E.ENGINES["onnxruntime"].unavailable(torch.device("cuda")) == "it runs on cpu only, not cuda"
    assert E.ENGINES[E.TORCHSCRIPT].unavailable(torch.device("cuda")) is None


def test_unknown_engine_and_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(
        E.EngineError,
        match=r"unknown engine 'tensorrt'; known: mnn, onnxruntime, openvino, torchscript,"
        r" torchscript-bf16",
    ):
        E.load("tensorrt", tmp_path, "u2netp", CPU)
    with pytest.raises(E.EngineError, match=r"u2netp\.pt not found; rebuild the archive"):
        E.load(E.TORCHSCRIPT, tmp_path, "u2netp", CPU)


def _mnn(directory: Path, name: str, threads: int = 2, streams: int = 1) -> E.Engine:
    # The engine itself, on any CPU: E.load would skip it for OpenVINO on an AVX-512 CPU (its hardware check).
    return E.ENGINES[E.MNN].load(directory / E.file_name(E.MNN, name), CPU, threads, streams)


def test_mnn_runs_batches_of_1_3_and_8_as_eager_does(archive: tuple[U2Net, Path, str, int]) -> None:
    model, directory, name, size = archive
    loaded = _mnn(directory, name)
    assert isinstance(loaded, E.MnnEngine) and loaded.name == E.MNN and loaded.stream_count == 1
    x = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = U2NetD0(model).eval()(x)
    outputs = {n: loaded(x[:n]) for n in (1, 3, 8)}
    for n, got in outputs.items():
        assert got.shape == (n, 1, size, size) and got.dtype == torch.float32
        assert float((got - want[:n]).abs().max()) <= 1e-4
    # Image by image: an image's d0 is the same alone or in any batch (no output buffer is shared).
    assert torch.equal(outputs[1][0], outputs[8][0]) and torch.equal(outputs[3], outputs[8][:3])
    assert not [m for m in sys.modules if m.startswith(("MNN.tools", "aliyun"))]


def test_mnn_runs_one_stream_whatever_is_asked(archive: tuple[U2Net, Path, str, int]) -> None:
    _, directory, name, size = archive
    two = _mnn(directory, name, streams=2)
    assert two.stream_count == 1
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    assert float((two(x) - _mnn(directory, name)(x)).abs().max()) < 1e-5


def test_falls_back_to_openvino_when_mnn_cannot_be_imported(
    archive: tuple[U2Net, Path, str, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    avx2_only: None,
) -> None:
    _, directory, name, _ = archive
    monkeypatch.setitem(sys.modules, "MNN", None)  # absent, or a wheel whose import fails
    with caplog.at_level(logging.WARNING, logger="handler.engine"):
        assert E.load(E.MNN, directory, name, CPU).name == E.OPENVINO
    assert "engine mnn cannot run (MNN cannot be imported in this Python" in caplog.text


def test_mnn_export_fails_loudly_when_the_converter_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(E, "export_onnx", lambda _model, path, _size: path.write_bytes(b"not an ONNX graph"))
    (tmp_path / "u2netp.mnn").write_bytes(b"stale")
    with pytest.raises(E.EngineError, match=r"MNN's converter wrote no u2netp\.mnn"):
        E.export(E.MNN, weights.random_weights("u2netp", 0).model, tmp_path, "u2netp", 64)
    assert not (tmp_path / "u2netp.mnn").exists()


# Converts, loads and runs MNN in a process of its own with every socket connection refused; prints what tried
# to connect and which of MNN's telemetry modules (MNN.tools, its logging SDK aliyun) got imported.
NO_NETWORK = textwrap.dedent(
    """
    import json, socket, sys
    from pathlib import Path
    tried = []

    def refuse(sock, address, *args):
        tried.append(repr(address))
        raise OSError("no network here")

    socket.socket.connect = socket.socket.connect_ex = refuse
    import torch
    from handler import engine as E, weights

    path = E.export(E.MNN, weights.random_weights("u2netp", 0).model, Path(sys.argv[1]), "u2netp", 64)
    out = E.MnnEngine(path, torch.device("cpu"), threads=2)(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64) and bool(torch.isfinite(out).all())
    telemetry = sorted(m for m in sys.modules if m.startswith(("MNN.tools", "aliyun")))
    print(json.dumps({"tried": tried, "telemetry": telemetry}))
    """
)


def _offline(cmd: list[str]) -> list[str]:
    # A network namespace of its own (root, or unprivileged user namespaces) has no route anywhere; where
    # unshare is refused, the socket guard in the script is what keeps it offline.
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-n", *cmd]
    return cmd


def test_mnn_converts_loads_and_runs_without_a_network(tmp_path: Path) -> None:
    cmd = _offline([sys.executable, "-c", NO_NETWORK, str(tmp_path)])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tried": [], "telemetry": []}
    assert (tmp_path / "u2netp.mnn").stat().st_size > 0


def test_nothing_served_imports_mnn_tools_or_its_logging_sdk() -> None:
    # MNN.tools (the converter's Python wrapper) imports aliyun's logging SDK, pip-installs it when missing and
    # reports usage; the converter is called through the wheel's C++ `_tools` instead (handler.engine).
    for source in sorted((ROOT / "handler").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            bad = [n for n in names if n.startswith(("MNN.tools", "aliyun"))]
            assert not bad, f"{source.name}:{node.lineno} imports {bad}"


def test_engine_benchmark_smoke_run_prints_its_table(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.engines", "--rounds", "1", "--batch-sizes", "1", "--no-accuracy"]
    cmd += ["--engines", "torchscript", "onnxruntime", "--write", str(tmp_path / "B.md")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.match(r"# fp32 matmul peak here: \d+ GFLOP/s with 2 threads", lines[1]), lines[1]
    assert lines[2].split()[:5] == ["model", "engine", "batch", "ms/batch", "img/s"]
    rows = [line.split() for line in lines[4:] if line.startswith("u2netp")]
    assert [row[1] for row in rows] == ["torchscript", "onnxruntime"]
    assert all(float(row[6]) > 0 for row in rows), rows  # GFLOP/s achieved
    assert "<!-- bench:engines -->\n```\n# u2netp, 2 threads" in (tmp_path / "B.md").read_text()
