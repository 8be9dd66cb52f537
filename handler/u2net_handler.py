"""TorchServe handler for U²-Net: thin glue between TorchServe's stages and handler.pipeline.

TorchServe loads the one class this module defines (tests/test_build.py checks there is only one).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from handler import codec, engine
from handler.codec import Pending
from handler.pipeline import BatchStats, Segmenter
from handler.settings import ArchiveInfo, HandlerSettings, SettingsError, limit_malloc_arenas, worker_threads

log = logging.getLogger(__name__)


class U2NetHandler:
    """Batches images through one traced U²-Net; answers every request, bad ones with their error.

    TorchServe needs only `initialize(context)` and `handle(data, context)` of a handler class. This one does
    not derive from TorchServe's BaseHandler: importing that module imports `openvino.torch` (OpenVINO's
    torch.compile backend, with torch._dynamo) and onnxruntime wherever they are installed, whether the
    handler uses them or not: memory every worker would hold for nothing (a bare worker with torch against
    one with base_handler imported; tests/test_memory.py bounds the worker's peak). Of BaseHandler's
    `handle`, this keeps what it used: the describe request, preprocess -> inference -> postprocess, and
    the HandlerTime metric.
    """

    context: Any = None

    def initialize(self, context: Any) -> None:
        limit_malloc_arenas()  # before the engine's and the pipeline's threads allocate
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        gpu_id = props.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.info = ArchiveInfo.read(model_dir)
        try:
            self.info.check_core()
        except SettingsError as exc:
            log.error("%s: %s", context.manifest["model"]["modelName"], exc)  # the worker log says why it stopped
            raise
        config = context.model_yaml_config or {}
        self.settings = HandlerSettings.from_yaml(config.get("handler"))
        threads = worker_threads(self.settings.threads, int(config.get("maxWorkers", 1)))
        torch.set_num_threads(threads)
        serialized = Path(context.manifest["model"]["serializedFile"])
        self.engine = engine.load(
            self.settings.engine, model_dir, serialized.stem, self.device, threads, self.settings.streams
        )
        self.segmenter = Segmenter(
            self.engine,
            self.info.variant,
            self.device,
            self.settings.max_pixels,
            self.settings.png_compression,
            threads=threads,  # the pixel work around the model on as many threads as its inference
        )
        self.model_name = context.manifest["model"]["modelName"]
        version = context.manifest["model"].get("modelVersion", "")
        self.served = codec.Served(self.model_name, version, self.info.weights)
        self._warm_up()
        log.info(
            "%s %s on %s (%s engine, %d threads), weights: %s",
            self.model_name, self.served.model_version, self.device, self.engine.name, threads, self.info.weights,
        )  # fmt: skip

    def _warm_up(self) -> None:
        # The first TorchScript call profiles and optimises the graph; pay that before traffic.
        size = self.info.variant.input_size
        with torch.inference_mode():
            for _ in range(2):
                self.segmenter.model(torch.zeros(1, 3, size, size, device=self.device))

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes | str]:
        """TorchServe's entry point: one reply per request of the batch (a describe request gets describe_handle)."""
        start = time.perf_counter()
        self.context = context
        if context.get_request_header(0, "describe") == "True":
            replies: list[bytes | str] = [self.describe_handle()]
        else:
            replies = self.postprocess(self.inference(self.preprocess(data)))
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return replies

    def preprocess(self, data: list[dict[str, Any]]) -> Pending:
        codecs = [codec.for_row(row, self.context.get_all_request_header(i)) for i, row in enumerate(data)]
        return Pending(codecs, self.segmenter.decode([c.request() for c in codecs]))

    def inference(self, pending: Pending, *args: Any, **kwargs: Any) -> Pending:
        return Pending(pending.codecs, self.segmenter.infer(pending.batch))

    def postprocess(self, pending: Pending) -> list[bytes | str]:
        outcomes, stats = self.segmenter.compose(pending.batch)
        self._emit_metrics(stats)
        replies = []
        for idx, (row_codec, outcome) in enumerate(zip(pending.codecs, outcomes, strict=True)):
            reply = row_codec.reply(outcome, self.served, stats.requests)
            if reply.http_status is not None:
                self.context.set_response_status(reply.http_status, outcome.error.message if outcome.error else "", idx)
            if reply.content_type is not None:
                self.context.set_response_content_type(idx, reply.content_type)
            replies.append(reply.body)
        return replies

    def _emit_metrics(self, stats: BatchStats) -> None:
        metrics = self.context.metrics
        dims = [Dimension("ModelName", self.model_name), Dimension("Level", "Model")]
        metrics.add_metric("U2ServeBatchSize", stats.requests, "count", None, dims, MetricTypes.GAUGE)
        metrics.add_metric("U2ServeImagesPerBatch", stats.images, "count", None, dims, MetricTypes.GAUGE)
        metrics.add_metric("U2ServeBatches", 1, "count", None, dims, MetricTypes.COUNTER)
        metrics.add_metric("U2ServeRequests", stats.requests, "count", None, dims, MetricTypes.COUNTER)
        for stage, ms in stats.timings_ms.items():
            stage_dims = [*dims, Dimension("Stage", stage)]
            metrics.add_metric("U2ServeStageTime", round(ms, 3), "ms", None, stage_dims, MetricTypes.GAUGE)

    def describe_handle(self) -> str:
        v = self.info.variant
        return json.dumps(
            {
                "variant": v.name,
                "weights": self.info.weights,
                "weights_random": self.info.weights.startswith("random"),
                "input_size": v.input_size,
                "device": str(self.device),
                "engine": self.engine.name,
                "max_pixels": self.settings.max_pixels,
                "tasks": ["mask", "cutout"],
            }
        )
