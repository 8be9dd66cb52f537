"""The app's Prometheus metrics, and the ASGI middleware that counts requests and caps their bodies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from u2serve.web.errors import PayloadTooLarge, response

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Answer:
    """What one request or call was answered with, filled in by the front as it learns it."""

    route: str = "other"
    status: str = "500"


class Metrics:
    """One registry per app (so tests can build several apps): requests, latencies, batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "u2serve_web_requests",
            "HTTP requests and gRPC calls (method GRPC, status the code's name) answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "u2serve_web_request_seconds",
            "Time to answer an HTTP request or a gRPC call",
            ["route"],
            registry=self.registry,
        )
        # One gauge for both fronts: the HPA (deploy/k8s/hpa.yaml) scales on the pod's whole load.
        self.in_flight = Gauge(
            "u2serve_web_requests_in_flight", "HTTP requests and gRPC calls being answered", registry=self.registry
        )
        self.batch_size = Histogram(
            "u2serve_web_batch_size", "The TorchServe batch each image ran in", ["model"],
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    @contextmanager
    def answering(self, method: str) -> Iterator[Answer]:
        """Counts one HTTP request or gRPC call in flight while it runs; then as answered, by the route and
        status the front set on the yielded Answer, with its time."""
        answer = Answer()
        start = time.perf_counter()
        self.in_flight.inc()
        try:
            yield answer
        finally:
            self.in_flight.dec()
            self.requests.labels(answer.route, method, answer.status).inc()
            self.latency.labels(answer.route).observe(time.perf_counter() - start)


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413 before they are read: by Content-Length at once, else
    while they stream. Also times every HTTP request for `Metrics`."""

    # Room for the multipart framing and the option fields around an image of max_bytes.
    SLACK = 1024 * 1024
    # The most of a refused body read and thrown away before answering; past it the connection is closed.
    DRAIN = 256 * 1024 * 1024

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = max_bytes + self.SLACK
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.metrics.answering(scope["method"]) as answer:

            async def counting_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    answer.status = str(message["status"])
                await send(message)

            try:
                declared = dict(scope["headers"]).get(b"content-length", b"")
                if declared.isdigit() and int(declared) > self.limit:
                    # Refused unread: the body is discarded as it arrives (up to DRAIN), so that the client,
                    # still sending, reads the 413 instead of a reset connection; nothing of it is kept.
                    await self._drain(receive)
                    await response(self._too_large(int(declared)))(scope, receive, counting_send)
                else:
                    await self.app(scope, self._capped(receive), counting_send)
            finally:
                answer.route = getattr(scope.get("route"), "path", None) or (
                    "/static" if scope["path"].startswith("/static/") else "other")  # fmt: skip

    async def _drain(self, receive: Receive) -> None:
        seen = 0
        while seen <= self.DRAIN:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _too_large(self, size: int | None) -> PayloadTooLarge:
        got = f"{size} bytes" if size is not None else "more"
        return PayloadTooLarge(f"request body is {got}, over the limit of {self.limit} bytes "
                               "(the image may be up to max_request_size, 32 MiB by default)")  # fmt: skip

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._too_large(None)
            return message

        return capped
