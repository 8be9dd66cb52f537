"""Retries with exponential backoff, only for the codes that mean "try again later"."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from u2net_client._errors import U2NetError, effective_code

T = TypeVar("T")

# INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED... would fail again the same way: never retried.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried when the server is unavailable or overloaded.

    Only UNAVAILABLE and RESOURCE_EXHAUSTED are retried (TorchServe's INTERNAL for a full job queue
    counts as RESOURCE_EXHAUSTED); a message over the size limit, though RESOURCE_EXHAUSTED, is not,
    since it would fail again. Retries stop at the call's deadline.

    Attributes:
        max_attempts: Attempts in all, the first included; 1 turns retries off.
        initial_backoff: Seconds before the second attempt.
        max_backoff: The longest wait between attempts.
        multiplier: Growth of the wait from one attempt to the next.
        jitter: Each wait varies randomly by up to this fraction, so clients do not retry in step.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 3.0
    multiplier: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, f"max_attempts={self.max_attempts}; must be >= 1")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise U2NetError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"backoff {self.initial_backoff}..{self.max_backoff} s; need 0 <= initial_backoff <= max_backoff",
            )
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise U2NetError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"multiplier={self.multiplier}, jitter={self.jitter}; need multiplier >= 1 and 0 <= jitter < 1",
            )

    def retryable(self, error: grpc.RpcError) -> bool:
        """Whether a call that failed with `error` may succeed if tried again."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = (error.details() if callable(getattr(error, "details", None)) else None) or ""
        if code is None:
            return False
        return effective_code(code, details) in RETRYABLE and "larger than max" not in details

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the second attempt)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1 + self.jitter * self.rng.uniform(-1, 1))


class Attempts:
    """The bookkeeping of one call's attempts: shared by the sync and the asyncio loop."""

    def __init__(self, policy: RetryPolicy, timeout: float | None, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        self.made = 0

    def remaining(self) -> float | None:
        """The timeout for the next attempt: what is left of the call's deadline."""
        self.made += 1
        return None if self.deadline is None else max(0.0, self.deadline - self.clock())

    def wait_before_retry(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if self.made >= self.policy.max_attempts or not self.policy.retryable(error):
            return None
        delay = self.policy.backoff(self.made)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            return None
        return delay


ErrorMapper = Callable[[grpc.RpcError, int], U2NetError]


def call(
    attempt: Callable[[float | None], T],
    policy: RetryPolicy,
    timeout: float | None,
    to_error: ErrorMapper,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`attempt(timeout_left)` until it succeeds, fails for good, or the deadline passes.

    Raises:
        U2NetError: `to_error(last_error, attempts_made)`.
    """
    attempts = Attempts(policy, timeout)
    while True:
        try:
            return attempt(attempts.remaining())
        except grpc.RpcError as exc:
            delay = attempts.wait_before_retry(exc)
            if delay is None:
                raise to_error(exc, attempts.made) from None
        sleep(delay)


async def acall(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    timeout: float | None,
    to_error: ErrorMapper,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """The asyncio twin of `call`."""
    attempts = Attempts(policy, timeout)
    while True:
        try:
            return await attempt(attempts.remaining())
        except grpc.RpcError as exc:
            delay = attempts.wait_before_retry(exc)
            if delay is None:
                raise to_error(exc, attempts.made) from None
        await sleep(delay)
