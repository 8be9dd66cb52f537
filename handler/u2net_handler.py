"""TorchServe handler for U²-Net: thin glue between TorchServe's stages and handler.pipeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler import engine, oip, requests, wire
from handler.errors import U2ServeError
from handler.pipeline import Batch, BatchStats, Outcome, Segmenter
from handler.settings import ArchiveInfo, HandlerSettings, worker_threads

log = logging.getLogger(__name__)


class U2NetHandler(BaseHandler):
    """Batches images through one traced U²-Net; answers every request, bad ones with their error."""

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        gpu_id = props.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.info = ArchiveInfo.read(model_dir)
        config = context.model_yaml_config or {}
        self.settings = HandlerSettings.from_yaml(config.get("handler"))
        threads = worker_threads(self.settings.threads, int(config.get("maxWorkers", 1)))
        torch.set_num_threads(threads)
        serialized = Path(context.manifest["model"]["serializedFile"])
        self.engine = engine.load(self.settings.engine, model_dir, serialized.stem, self.device, threads)
        self.segmenter = Segmenter(
            self.engine, self.info.variant, self.device, self.settings.max_pixels, self.settings.png_compression
        )
        self.model_name = context.manifest["model"]["modelName"]
        self.model_version = context.manifest["model"].get("modelVersion", "")
        self._warm_up()
        self.initialized = True
        log.info(
            "%s %s on %s (%s engine, %d threads), weights: %s",
            self.model_name, self.model_version, self.device, self.engine.name, threads, self.info.weights,
        )  # fmt: skip

    def _warm_up(self) -> None:
        # The first TorchScript call profiles and optimises the graph; pay that before traffic.
        size = self.info.variant.input_size
        with torch.inference_mode():
            for _ in range(2):
                self.segmenter.model(torch.zeros(1, 3, size, size, device=self.device))

    def preprocess(self, data: list[dict[str, Any]]) -> Batch:
        self._protocols = [requests.protocol_of(row) for row in data]
        self._request_ids = [oip.request_id(row) for row in data]
        items: list[requests.SegmentRequest | U2ServeError] = []
        for idx, row in enumerate(data):
            try:
                items.append(requests.parse(row, self.context.get_all_request_header(idx)))
            except U2ServeError as exc:
                items.append(exc)
        return self.segmenter.decode(items)

    def inference(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        return self.segmenter.infer(batch)

    def postprocess(self, batch: Batch) -> list[bytes | str]:
        outcomes, stats = self.segmenter.compose(batch)
        self._emit_metrics(stats)
        return [self._envelope(i, self._reply(i, out, stats)) for i, out in enumerate(outcomes)]

    def _envelope(self, idx: int, reply: bytes) -> bytes | str:
        if self._protocols[idx] != "v2":
            return reply
        return oip.reply(reply, self._request_ids[idx], self.model_name, self.model_version)

    def _reply(self, idx: int, out: Outcome, stats: BatchStats) -> bytes:
        protocol = self._protocols[idx]
        if out.error is not None:
            if protocol == "raw":
                self.context.set_response_status(out.error.code.http_status, out.error.message, idx)
                self.context.set_response_content_type(idx, "application/json")
            return requests.error_reply(out.error, protocol)
        if protocol == "raw":
            self.context.set_response_content_type(idx, "image/png")
            return out.png
        msg: dict[str, Any] = {
            "task": int(out.request.task) if out.request else 0,
            "image": out.png,
            "media_type": "image/png",
            "width": out.width,
            "height": out.height,
            "output_width": out.output_size[0],
            "output_height": out.output_size[1],
            "model_name": self.model_name,
            "model_version": self.model_version,
            "weights": self.info.weights,
            "timings_ms": out.timings_ms,
            "batch_size": stats.requests,
        }
        if out.box is not None:
            msg["box"] = {"x": out.box.x, "y": out.box.y, "width": out.box.width, "height": out.box.height}
        return wire.encode_response(msg)

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
