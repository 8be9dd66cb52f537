"""GET /api/remove?url=: fetch an image only from hosts an operator allows, never from a private address.

Each hop (the URL and every redirect) is checked: http(s) only, the host on the allow-list, and every
address it resolves to globally routable. The connection then goes to the address that was checked
(the Host header and TLS name stay the host's), so a DNS answer that changes in between cannot point
the app at loopback, the LAN or a cloud metadata service. The body is capped while it streams.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from u2serve.web.errors import HTTPError, PayloadTooLarge

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def public_address(address: str) -> bool:
    """Globally routable: not private, loopback, link-local (169.254.169.254), multicast or reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_link_local or ip.is_loopback or ip.is_private)


class Fetcher:
    """Fetches allow-listed URLs; raises HTTPError 403 for a refused URL, 400/413/504 for a bad fetch."""

    def __init__(
        self,
        allowed: tuple[str, ...],
        max_bytes: int,
        max_redirects: int,
        timeout: float = 10.0,
        resolver: Resolver = resolve,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allowed = allowed
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._timeout = timeout
        self._resolve = resolver
        self._transport = transport

    async def get(self, url: str) -> bytes:
        if not self._allowed:
            raise HTTPError(403, "fetching images by URL is off; an operator allows hosts with --allow-url-host")
        async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout, trust_env=False) as client:
            for _ in range(self._max_redirects + 1):
                response = await self._hop(client, url)
                try:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    return await self._body(response, url)
                finally:
                    await response.aclose()
        raise HTTPError(400, f"more than {self._max_redirects} redirects fetching the image; give its final URL")

    async def _hop(self, client: httpx.AsyncClient, url: str) -> httpx.Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(403, f"url {url!r} refused: only http:// and https:// URLs with a host are fetched")
        host = parts.hostname
        if not host_allowed(host, self._allowed):
            raise HTTPError(403, f"url host {host!r} is not on the operator's allow-list ({', '.join(self._allowed)})")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise HTTPError(400, f"cannot resolve {host!r}: {exc}") from exc
        refused = [a for a in addresses if not public_address(a)]
        if refused or not addresses:
            raise HTTPError(403, f"url host {host!r} resolves to {', '.join(refused) or 'nothing'}: private, "
                            "loopback and link-local addresses are never fetched")  # fmt: skip
        pinned = addresses[0]
        netloc = f"[{pinned}]" if ":" in pinned else pinned
        target = parts._replace(netloc=f"{netloc}:{port}").geturl()
        request = client.build_request("GET", target, headers={"Host": parts.netloc.rsplit("@", 1)[-1]})
        request.extensions["sni_hostname"] = host
        try:
            return await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise HTTPError(504, f"no answer from {host} within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise HTTPError(400, f"cannot fetch {url!r}: {exc}") from exc

    async def _body(self, response: httpx.Response, url: str) -> bytes:
        if response.status_code != 200:
            raise HTTPError(400, f"fetching {url!r} answered HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise PayloadTooLarge(
                f"the image at {url!r} is {declared} bytes, over the limit of {self._max_bytes} bytes"
            )
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise PayloadTooLarge(f"the image at {url!r} is over the limit of {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
