"""The SDK through the gateway's gRPC front, in front of a real TorchServe: the answers TorchServe gives directly,
keys refused as TorchServe refuses them, deadlines, the asyncio client, the management calls it serves and not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from u2net_client import AsyncU2NetClient, RetryPolicy, U2NetClient, U2NetError

pytest.importorskip("fastapi", reason="the web extra: pip install -e '.[web]' (make test installs it)")


@pytest.fixture(scope="module")
def photo(reference_dir) -> Path:
    return sorted((reference_dir / "images").iterdir())[0]


@pytest.fixture(scope="module")
def key(web) -> str:
    return web.token()


def through_the_gateway(web, key: str | None, **kwargs: object) -> U2NetClient:
    """The SDK pointed at the gateway, as a cluster's caller points it at the Service: one address, one key."""
    token = key or ""  # "": no key sent at all
    return U2NetClient(web.grpc_target, web.grpc_target, token=token, management_token=token, **kwargs)  # type: ignore[arg-type]


def test_masks_and_cutouts_through_the_gateway_are_torchserves(web, key, server, photo):
    with (
        through_the_gateway(web, key) as gateway,
        U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file) as direct,
    ):
        for model in ("u2netp", "u2net"):
            via, own = gateway.mask(photo, model), direct.mask(photo, model)
            assert (via.model, via.input_size) == (own.model, own.input_size)
            assert np.abs(via.array.astype(int) - own.array.astype(int)).max() <= 2, model  # batches may differ
            cut, own_cut = gateway.cutout(photo, model), direct.cutout(photo, model)
            assert cut.image.mode == own_cut.image.mode == "RGBA" and cut.image.size == own_cut.image.size
            alpha, own_alpha = (np.asarray(c.image)[..., 3].astype(int) for c in (cut, own_cut))
            assert np.abs(alpha - own_alpha).max() <= 2, model
        assert gateway.ping()
        assert {m.name for m in gateway.models()} == {m.name for m in direct.models()} == {"u2netp", "u2net"}
        assert gateway.describe("u2netp", handler=False).ready_workers >= 1


def test_no_key_and_a_wrong_key_are_refused_as_torchserve_refuses_them(web, server, photo):
    for key in (None, "not-the-key"):
        with through_the_gateway(web, key) as gateway, pytest.raises(U2NetError, match="refused the token") as info:
            gateway.mask(photo, "u2netp")
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with (
        U2NetClient(server.grpc_target, token="not-the-key", management_token="x") as direct,
        pytest.raises(U2NetError, match="refused the token") as info,
    ):
        direct.mask(photo, "u2netp")  # the same code, the same words, directly
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_deadline_shorter_than_the_inference_ends_as_deadline_exceeded(web, key, photo):
    with through_the_gateway(web, key) as gateway:
        with pytest.raises(U2NetError) as info:
            gateway.mask(photo, "u2net", timeout=0.05)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert gateway.mask(photo, "u2netp").model == "u2netp"  # and it keeps serving


def test_changing_what_is_served_is_not_offered_through_the_gateway(web, key):
    with through_the_gateway(web, key) as gateway:
        for call in (lambda: gateway.unregister("u2netp"), lambda: gateway.scale("u2netp", 1, 1)):
            with pytest.raises(U2NetError) as info:
                call()
            assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
        assert {m.name for m in gateway.models()} == {"u2netp", "u2net"}  # nothing changed


def test_the_asyncio_client_through_the_gateway(web, key, photo):
    async def run() -> tuple[object, ...]:
        async with AsyncU2NetClient(web.grpc_target, web.grpc_target, token=key, management_token=key) as gateway:
            return await asyncio.gather(gateway.mask(photo, "u2netp"), gateway.cutout(photo, "u2netp"))

    mask, cutout = asyncio.run(run())
    assert mask.array.ndim == 2 and cutout.image.mode == "RGBA"  # type: ignore[attr-defined]


def test_an_unreachable_torchserve_is_unavailable_to_the_sdk_and_retried(web, key, photo, tmp_path):
    """A second gateway whose TorchServe is gone: the SDK's retry sees UNAVAILABLE, tries again, reports it."""

    from tools.torchserve import free_ports
    from tools.web import Web, start

    ports = free_ports(3)
    home = tmp_path / "home"
    home.mkdir()
    (home / "key_file.json").write_text((web.home / "key_file.json").read_text())
    lost = Web(home, port=ports[0], grpc_port=ports[1])
    start(lost, ["--target", f"127.0.0.1:{ports[2]}", "--management-target", f"127.0.0.1:{ports[2]}"])
    try:
        retry = RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=0.2)
        with through_the_gateway(lost, key, retry=retry) as gateway, pytest.raises(U2NetError) as info:
            gateway.mask(photo, "u2netp", timeout=30)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "after 3 attempts" in info.value.message and "TorchServe behind the gateway" in info.value.message
    finally:
        lost.stop()
