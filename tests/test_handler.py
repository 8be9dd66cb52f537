"""The TorchServe handler through a real `ts.context.Context`, without a server.

The archive is unpacked and run in a subprocess whose imports of onnx, onnxruntime, openvino, MNN and rembg fail:
the handler needs torch, TorchServe and the installed u2serve package (its image pipeline and
generated protobuf classes), nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests import servekit as sk
from u2serve.core._generated import u2serve_pb2

RUNNER = textwrap.dedent(
    """
    import json, sys
    OPTIONAL = ("onnx", "onnxruntime", "openvino", "MNN", "rembg")
    for blocked in OPTIONAL:
        sys.modules[blocked] = None  # any import of these now raises ImportError
    model_dir, requests_file = sys.argv[1], sys.argv[2]
    sys.path.insert(0, model_dir)
    import u2net_handler
    from ts.context import Context, RequestProcessor

    class Metrics:
        def __init__(self):
            self.seen = []
        def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None):
            self.seen.append((name, value, [(d.name, d.value) for d in dimensions or []]))
        def add_time(self, *args, **kwargs):
            pass

    manifest = json.load(open(f"{model_dir}/MAR-INF/MANIFEST.json"))
    context = Context("u2netp", model_dir, manifest, 8, None, "0.12.0", metrics=Metrics(),
                      model_yaml_config={"handler": {"max_pixels": 10_000_000}})
    rows = json.load(open(requests_file))
    data = [{k: bytes.fromhex(v) for k, v in r["inputs"].items()} for r in rows]
    context.request_processor = [RequestProcessor(r.get("headers", {})) for r in rows]
    handler = u2net_handler.U2NetHandler()
    handler.initialize(context)
    replies = handler.handle(data, context)
    out = {
        "replies": [r.hex() for r in replies],
        "status": [p._status_code for p in context.request_processor],
        "content_types": [p.get_response_headers().get("content-type") for p in context.request_processor],
        "metrics": context.metrics.seen,
        "modules": sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL and sys.modules[m] is not None),
    }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def model_dir(model_store, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("u2netp_mar")
    with zipfile.ZipFile(model_store / "u2netp.mar") as mar:
        mar.extractall(target)
    return target


def _run(model_dir: Path, tmp_path: Path, rows: list[dict]) -> dict:
    requests_file = tmp_path / "requests.json"
    encoded = [{"inputs": {k: v.hex() for k, v in r["inputs"].items()}, "headers": r.get("headers", {})} for r in rows]
    requests_file.write_text(json.dumps(encoded))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(model_dir), str(requests_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _proto(image: bytes, task: int = 1) -> dict:
    return {"inputs": {"u2serve": u2serve_pb2.SegmentRequest(task=task, image=image).SerializeToString()}}


def test_archive_serves_a_mixed_batch_without_onnx(model_dir, tmp_path, reference_dir):
    good = sk.photo(reference_dir, "im_01.png")
    rows = [
        _proto(good),
        _proto(b"garbage"),
        {"inputs": {"body": good}, "headers": {"X-U2Serve-Task": "mask"}},
        {"inputs": {"body": b""}},
        {"inputs": {"data": good, "task": b"cutout", "background": b"255,255,255"}},
    ]
    out = _run(model_dir, tmp_path, rows)
    replies = [bytes.fromhex(r) for r in out["replies"]]
    assert out["modules"] == []
    first = u2serve_pb2.SegmentResponse.FromString(replies[0])
    assert not first.HasField("error") and first.batch_size == 5
    assert sk.decode_png(first.image).mode == "L"
    second = u2serve_pb2.SegmentResponse.FromString(replies[1])
    assert second.error.code == 3 and "JPEG" in second.error.message
    assert sk.decode_png(replies[2]).mode == "L"
    assert json.loads(replies[3])["type"] == "INVALID_ARGUMENT"
    assert sk.decode_png(replies[4]).mode == "RGB"
    assert out["status"] == [200, 200, 200, 400, 200]
    assert out["content_types"][2:] == ["image/png", "application/json", "image/png"]
    names = {m[0] for m in out["metrics"]}
    assert {"U2ServeBatchSize", "U2ServeImagesPerBatch", "U2ServeStageTime"} <= names
    batch_size = next(m for m in out["metrics"] if m[0] == "U2ServeBatchSize")
    assert batch_size[1] == 5
    images = next(m for m in out["metrics"] if m[0] == "U2ServeImagesPerBatch")
    assert images[1] == 3


def test_pixel_limit_comes_from_model_config(model_dir, tmp_path):
    # The runner sets handler.max_pixels to 10 MP: a 12 MP declaration is refused.
    out = _run(model_dir, tmp_path, [_proto(sk.png_declaring(4000, 3000))])
    reply = u2serve_pb2.SegmentResponse.FromString(bytes.fromhex(out["replies"][0]))
    assert reply.error.code == 3 and "10000000" in reply.error.message.replace(",", "")
