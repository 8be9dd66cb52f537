"""The gateway's caller keys from a file (a Kubernetes Secret): several at once, rotated without a restart."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra: pip install -e '.[web]' (make test installs it)")

from fastapi.testclient import TestClient

from u2net_client import MaskResult, ModelInfo
from u2net_client._management import describe_request, parse_description
from u2serve.web import Settings, create_app
from u2serve.web import app as web_app
from u2serve.web.settings import CALLER_KEYS_ENV, SettingsError, from_args, parser


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), 128).save(buf, format="PNG")
    return buf.getvalue()


class FakeClient:
    """A mask of the input's size for every call; no server."""

    async def mask(self, image: bytes, model: str = "u2netp", **_: object) -> MaskResult:
        return MaskResult(png(), model, "1.0", "fake", (8, 6), None, {"inference": 1.0}, 1)

    async def close(self) -> None:
        pass


def secret_volume(root: Path, keys: str, version: int) -> Path:
    """A Secret volume as the kubelet writes it: the data in a new folder, `..data` swapped to it atomically,
    the file a symlink through `..data` (so an update is a new inode, never a rewrite in place)."""
    folder = root / f"..2026_12_07_{version}"
    folder.mkdir()
    (folder / "keys").write_text(keys)
    os.utime(folder / "keys", ns=(0, 0))  # the same mtime at every version: only the inode tells them apart
    (root / "..data_tmp").symlink_to(folder.name)
    (root / "..data_tmp").rename(root / "..data")
    if not (root / "keys").is_symlink():
        (root / "keys").symlink_to("..data/keys")
    return root / "keys"


def status(client: TestClient, key: str | None) -> int:
    headers = {"X-Api-Key": key} if key else {}
    return client.post("/v1/models/u2netp/mask", files={"file": ("a.png", png())}, headers=headers).status_code


def test_a_rotated_secret_is_honoured_without_a_restart_and_the_old_key_refused_after(tmp_path):
    keys = secret_volume(tmp_path, "old-key-aaaa\n", 1)
    settings = from_args(parser().parse_args(["--caller-keys", str(keys)]), {})  # as the pod starts it
    with TestClient(create_app(settings, lambda _: FakeClient())) as client:
        assert (status(client, "old-key-aaaa"), status(client, "new-key-bbbb"), status(client, None)) == (200, 403, 401)
        secret_volume(tmp_path, "# overlap: both while callers move\nold-key-aaaa\nnew-key-bbbb\n", 2)
        assert (status(client, "old-key-aaaa"), status(client, "new-key-bbbb")) == (200, 200)
        secret_volume(tmp_path, "new-key-bbbb\n", 3)  # same length as the first: the inode changed
        assert (status(client, "old-key-aaaa"), status(client, "new-key-bbbb")) == (403, 200)


def test_an_empty_caller_keys_file_refuses_everyone_with_503(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# no key yet\n")
    with TestClient(create_app(Settings(key_file=None, caller_keys=keys), lambda _: FakeClient())) as client:
        answer = client.post("/v1/models/u2netp/mask", files={"file": ("a.png", png())}, headers={"X-Api-Key": "any"})
    assert answer.status_code == 503 and "has no key" in answer.text


def test_caller_keys_need_no_torchserve_key_file_and_its_calls_carry_no_key(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    environ = {CALLER_KEYS_ENV: str(keys), "U2SERVE_KEY_FILE": str(tmp_path / "never-written.json")}
    settings = from_args(parser().parse_args([]), environ)
    assert (settings.caller_keys, settings.key_file) == (keys.absolute(), None)
    made = {}
    monkeypatch.setattr(web_app, "AsyncU2NetClient", lambda *args, **kwargs: made.update(kwargs))
    web_app.sdk_client(settings)
    assert (made["token"], made["management_token"], made["key_file"]) == ("", "", None)


def test_settings_without_any_key_or_with_a_missing_keys_file_are_refused(tmp_path):
    with pytest.raises(SettingsError, match="no keys: give TorchServe's key_file, or caller_keys"):
        Settings(key_file=None)
    with pytest.raises(SettingsError, match="no caller-keys file at"):
        from_args(parser().parse_args(["--caller-keys", str(tmp_path / "absent")]), {})


class DescribingClient(FakeClient):
    """Records how /readyz describes each model."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    async def describe(self, model: str, *, handler: bool = True, timeout: float | None = None) -> ModelInfo:
        self.asked.append((model, handler))
        (info,) = parse_description(f'[{{"modelName": "{model}", "workers": [{{"id": "9000", "status": "READY"}}]}}]')
        return info


def test_readyz_asks_torchserves_frontend_alone_never_a_worker(tmp_path):
    """A describe through the handler waits behind a batch or a model's loading; when the probe's timeout cancels
    it, TorchServe 0.12 answers into the cancelled stream and loses the worker (seen in make k8s-test)."""
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    fake = DescribingClient()
    with TestClient(create_app(Settings(key_file=None, caller_keys=keys), lambda _: fake)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.json()["ready"] is True
    assert sorted(fake.asked) == [("u2net", False), ("u2netp", False)]
    assert describe_request("u2net", None, handler=False).customized is False
    assert describe_request("u2net", None).customized is True  # the SDK's describe() still asks the handler
