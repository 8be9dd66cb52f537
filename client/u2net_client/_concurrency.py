"""Bounded-concurrency maps that keep input order and return per-item errors instead of raising them."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import grpc

from u2net_client._errors import U2NetError

T = TypeVar("T")
R = TypeVar("R")


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, f"concurrency={concurrency}; must be >= 1")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Generator[R | U2NetError, None, None]:
    """fn over items on `concurrency` threads, yielding results (or U2NetErrors) in input order."""
    check_concurrency(concurrency)
    source = iter(items)
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="u2net") as pool:
        try:
            window.extend(pool.submit(fn, item) for item in itertools.islice(source, concurrency))
            while window:
                head = window.popleft()
                try:
                    outcome: R | U2NetError = head.result()
                except U2NetError as exc:
                    outcome = exc
                for item in itertools.islice(source, 1):
                    window.append(pool.submit(fn, item))
                yield outcome
        finally:
            # Left early (break, exception): drop what has not started.
            for future in window:
                future.cancel()


async def aordered_map(
    fn: Callable[[T], Awaitable[R]], items: Iterable[T], concurrency: int
) -> AsyncGenerator[R | U2NetError, None]:
    """The asyncio twin of ordered_map: at most `concurrency` calls awaited at once."""
    check_concurrency(concurrency)
    source = iter(items)
    window: deque[asyncio.Task[R]] = deque()
    try:
        window.extend(asyncio.ensure_future(fn(item)) for item in itertools.islice(source, concurrency))
        while window:
            head = window.popleft()
            try:
                outcome: R | U2NetError = await head
            except U2NetError as exc:
                outcome = exc
            for item in itertools.islice(source, 1):
                window.append(asyncio.ensure_future(fn(item)))
            yield outcome
    finally:
        for task in window:
            task.cancel()
