"""GrpcUser: a Locust user holding a U2NetClient whose calls are reported to Locust's statistics.

gRPC's C core blocks the calling thread unless it is told about gevent: `init_gevent()` runs on import,
before any channel exists, so that many users share one process.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc.experimental.gevent as grpc_gevent
from locust import SequentialTaskSet, User
from locust.env import Environment
from locust.exception import LocustError

grpc_gevent.init_gevent()

try:
    from u2net_client import RetryPolicy, U2NetClient, U2NetError
except ImportError:  # the SDK of this checkout when it is not installed (`make` installs it editable)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
    from u2net_client import RetryPolicy, U2NetClient, U2NetError

REQUEST_TYPE = "grpc"


class TimedClient:
    """A U2NetClient whose `mask` and `cutout` fire one Locust request event each.

    The event is named after the call ("mask", "cutout"); its length is the PNG's size in bytes and its
    context carries the server's batch size, so a listener can see how full the batches were.
    """

    def __init__(self, client: U2NetClient, environment: Environment) -> None:
        self._client = client
        self._environment = environment

    def mask(self, image: bytes, model: str) -> None:
        self._timed("mask", lambda: self._client.mask(image, model))

    def cutout(self, image: bytes, model: str) -> None:
        self._timed("cutout", lambda: self._client.cutout(image, model))

    def close(self) -> None:
        self._client.close()

    def _timed(self, name: str, call: Callable[[], Any]) -> None:
        start = time.perf_counter()
        result, exception = None, None
        try:
            result = call()
        except U2NetError as exc:  # the SDK's one error type; anything else is a bug and stops the user
            exception = exc
        self._environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=len(result.png) if result is not None else 0,
            response=result,
            context={"batch_size": result.batch_size if result is not None else None},
            exception=exception,
        )


class GrpcUser(User):
    """A Locust user with `self.client`, a TimedClient for the server at `--host HOST:PORT`.

    Subclasses set `key_file` (None: $U2SERVE_KEY_FILE, else ./var/key_file.json) and `protocol` (the
    SDK's: "torchserve", "v2" or "triton"), and add tasks.
    Retries are off: a load test should count an overloaded server's refusals, not hide them.
    """

    abstract = True
    key_file: str | None = None
    protocol: str = "torchserve"
    timeout: float = 120.0

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("no target: pass --host HOST:PORT (the gRPC inference port, 7070 for `make serve`)")
        target = self.host.removeprefix("grpc://")
        client = U2NetClient(
            target,
            key_file=self.key_file,
            timeout=self.timeout,
            retry=RetryPolicy(max_attempts=1),
            protocol=self.protocol,
        )
        self.client = TimedClient(client, environment)

    def on_stop(self) -> None:
        self.client.close()


class StaggeredSequence(SequentialTaskSet):
    """Tasks in a fixed weighted cycle (@task(3) runs three times in a row), each user starting one step on.

    A deterministic mix instead of random picks: with the cycle [mask, cutout x3], the first two users
    already run both, so even a short run measures every task, and the counts keep the weights' ratio.
    """

    _users = itertools.count()

    def __init__(self, parent: User) -> None:
        super().__init__(parent)
        for _ in range(next(self._users) % max(len(self.tasks), 1)):
            next(self._task_cycle)
