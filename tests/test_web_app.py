"""The web gateway without a server: auth, limits, errors, the rembg mapping and the URL guard (a fake SDK client)."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import grpc
import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra: pip install -e '.[web]' (make test installs it)")

from fastapi.testclient import TestClient

from u2net_client import CutoutResult, MaskResult, U2NetError
from u2serve.web import Settings, create_app, fields, rembg
from u2serve.web.errors import HTTPError
from u2serve.web.fetch import Fetcher, public_address

STATIC = Path(__file__).resolve().parents[1] / "client/u2serve/web/static"


def png(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


class FakeClient:
    """Answers like the SDK: a mask or cutout of the input's size; `fail` makes every call raise it."""

    def __init__(self) -> None:
        self.fail: U2NetError | None = None
        self.calls: list[tuple[str, str, dict]] = []

    async def _result(self, kind, image, model, kwargs):
        self.calls.append(("mask" if kind is MaskResult else "cutout", model, kwargs))
        if self.fail:
            raise self.fail
        with Image.open(io.BytesIO(image)) as im:
            size = im.size
        mode = "L" if kind is MaskResult else ("RGB" if kwargs.get("background") else "RGBA")
        out = png(size, mode)
        return kind(out, model, "1.0", "fake", size, None, {"inference": 12.5}, 3)

    async def mask(self, image, model="u2netp", **kwargs):
        return await self._result(MaskResult, image, model, kwargs)

    async def cutout(self, image, model="u2netp", **kwargs):
        return await self._result(CutoutResult, image, model, kwargs)

    async def ping(self, **_):
        return True

    async def close(self):
        pass


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"inference": {"key": "good"}, "management": {"key": "mgmt"}}))
    return path


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
def app(key_file: Path, fake: FakeClient):
    settings = Settings(key_file=key_file, max_pixels=10_000, max_body_bytes=100_000)
    with TestClient(create_app(settings, lambda _: fake)) as client:
        yield client


KEY = {"X-Api-Key": "good"}


def test_health_and_options_need_no_token(app):
    assert app.get("/healthz").json() == {"status": "ok"}
    opts = app.get("/v1/options").json()
    assert opts["models"] == ["u2netp", "u2net"] and opts["default_model"] == "u2net"
    assert opts["model_labels"]["u2netp"].startswith("U2NETP (fast")
    assert "background" in [f["name"] for f in opts["tasks"]["cutout"]]
    assert "background" not in [f["name"] for f in opts["tasks"]["mask"]]


def test_no_token_is_401_wrong_token_403_and_both_headers_work(app):
    files = {"file": ("a.png", png())}
    assert app.post("/api/remove", files=files).status_code == 401
    assert app.post("/api/remove", files=files, headers={"X-Api-Key": "bad"}).status_code == 403
    wrong = app.post("/api/remove", files=files, headers={"Authorization": "Bearer bad"})
    assert wrong.status_code == 403 and wrong.json()["type"] == "forbidden"
    for headers in (KEY, {"Authorization": "Bearer good"}):
        ok = app.post("/api/remove", files=files, headers=headers)
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
        assert ok.headers["x-u2serve-batch-size"] == "3" and "inference;dur=12.5" in ok.headers["server-timing"]


def test_page_token_moves_into_an_httponly_strict_cookie(app):
    r = app.get("/?token=good", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "u2serve_token=good" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert app.post("/v1/models/u2netp/mask", files={"file": ("a.png", png())}).status_code == 200
    app.cookies.clear()
    refused = app.get("/?token=bad", follow_redirects=False)
    assert refused.headers["location"] == "/#token-refused" and "set-cookie" not in refused.headers


def test_a_rotated_key_is_the_only_one_accepted(app, key_file):
    key_file.write_text(json.dumps({"inference": {"key": "rotated-and-longer"}}))
    files = {"file": ("a.png", png())}
    assert app.post("/api/remove", files=files, headers=KEY).status_code == 403
    assert app.post("/api/remove", files=files, headers={"X-Api-Key": "rotated-and-longer"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "empty image"),
        (b"just some text, not a picture", 400, "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 400, "truncated or corrupt"),
        (png((200, 200)), 413, "over the limit of 10000 pixels"),
    ],
)
def test_bad_images_are_refused_before_the_model(app, fake, body, status, message):
    r = app.post("/api/remove", files={"file": ("x.png", body)}, headers=KEY)
    assert r.status_code == status and message in r.json()["message"], r.text
    assert fake.calls == []


def test_a_body_over_the_limit_is_413_unread(app):
    big = b"\0" * 1_300_000  # over max_body_bytes + the multipart slack
    r = app.post("/api/remove", files={"file": ("x.png", big)}, headers=KEY)
    assert r.status_code == 413 and "over the limit" in r.json()["message"]


def test_missing_file_and_unknown_model(app):
    assert "multipart form field `file`" in app.post("/api/remove", data={"om": "true"}, headers=KEY).json()["message"]
    r = app.post("/api/remove", files={"file": ("a.png", png())}, data={"model": "isnet"}, headers=KEY)
    assert r.status_code == 400 and "u2netp, u2net" in r.json()["message"]
    assert app.post("/v1/models/nope/mask", files={"file": ("a.png", png())}, headers=KEY).status_code == 404
    two = {"file": ("a.png", png()), "background_image": ("b.png", png())}  # a second image: not rembg's API
    r = app.post("/api/remove", files=two, headers=KEY)
    assert r.status_code == 400 and "background_image: rembg's /api/remove takes one file" in r.json()["message"]


@pytest.mark.parametrize(
    ("code", "status", "retry_after"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503, "5"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "1"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, None),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, None),
    ],
)
def test_sdk_errors_become_json_statuses(app, fake, code, status, retry_after):
    fake.fail = U2NetError(code, "what went wrong")
    r = app.post("/v1/models/u2netp/cutout", files={"file": ("a.png", png())}, headers=KEY)
    body = r.json()
    assert r.status_code == status and body["code"] == status and body["message"].startswith("what went wrong")
    assert set(body) == {"code", "type", "message"}
    assert r.headers.get("retry-after") == retry_after


def test_limits_are_413_by_their_type_not_their_message(app, fake):
    from u2serve.core.imaging import TooManyPixels

    fake.fail = TooManyPixels(grpc.StatusCode.INVALID_ARGUMENT, "image is 9x9 = 81 pixels, over the limit of 80")
    r = app.post("/v1/models/u2netp/mask", files={"file": ("a.png", png())}, headers=KEY)
    assert r.status_code == 413 and r.json()["type"] == "too_large"
    fake.fail, fake.calls = None, []
    files = {"file": ("a.png", png()), "background_image": ("b.png", png((200, 200)))}
    r = app.post("/v1/models/u2netp/cutout", files=files, headers=KEY)
    assert r.status_code == 413 and r.json()["message"].startswith("background_image: image is 200x200"), r.text
    assert fake.calls == []  # refused before anything was sent


def test_an_unreadable_key_file_is_503_on_keyed_routes_only(app, key_file):
    key_file.unlink()
    r = app.get("/v1/models", headers=KEY)
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and "key file" in r.json()["message"]
    assert app.get("/healthz").status_code == 200 and app.get("/v1/options").status_code == 200
    assert app.get("/?token=good", follow_redirects=False).headers["location"] == "/#token-refused"


def test_v1_options_reach_the_sdk_typed(app, fake):
    data = {"background": "#ffffff", "threshold": "0.5", "crop": "true", "crop_margin": "4"}
    r = app.post("/v1/models/u2net/cutout", files={"file": ("a.png", png())}, data=data, headers=KEY)
    assert r.status_code == 200, r.text
    assert fake.calls[-1] == ("cutout", "u2net", {"background": "#ffffff", "threshold": 0.5, "crop": True,
                                                   "crop_margin": 4})  # fmt: skip
    bad = app.post("/v1/models/u2net/mask", files={"file": ("a.png", png())}, data={"background": "#fff"}, headers=KEY)
    assert bad.status_code == 400 and "unknown option(s) background for mask" in bad.json()["message"]


def test_api_remove_serves_u2net_by_default_as_rembg_does_and_u2netp_a_field_away(app, fake):
    files = {"file": ("a.png", png())}
    assert app.post("/api/remove", files=files, headers=KEY).status_code == 200
    assert fake.calls[-1][:2] == ("cutout", "u2net")
    assert app.post("/api/remove", files=files, data={"model": "u2netp"}, headers=KEY).status_code == 200
    assert fake.calls[-1][:2] == ("cutout", "u2netp")


def test_rembg_parameters_map_onto_the_sdk(app, fake):
    files = {"file": ("a.png", png())}
    assert (
        Image.open(io.BytesIO(app.post("/api/remove", files=files, data={"om": "true"}, headers=KEY).content)).mode
        == "L"
    )
    white = app.post("/api/remove", files=files, data={"bgc": "255,255,255,255"}, headers=KEY)
    assert fake.calls[-1][2] == {"background": (255, 255, 255)} and Image.open(io.BytesIO(white.content)).mode == "RGB"
    # rembg 2.0 reads bgc from the query string of a POST; both work here.
    app.post("/api/remove?bgc=0,0,0,255", files=files, headers=KEY)
    assert fake.calls[-1][2] == {"background": (0, 0, 0)}
    half = app.post("/api/remove", files=files, data={"bgc": "255,0,0,128"}, headers=KEY)
    assert Image.open(io.BytesIO(half.content)).mode == "RGBA" and fake.calls[-1][2] == {}
    assert app.post("/api/remove", files=files, data={"bgc": "1,2,3"}, headers=KEY).status_code == 400


@pytest.mark.parametrize("param", ["a", "ppm"])
def test_matting_and_postprocess_follow_the_sdk(app, fake, param):
    r = app.post("/api/remove", files={"file": ("a.png", png())}, data={param: "true"}, headers=KEY)
    if fields.sdk_supports("cutout", "refine"):
        assert r.status_code == 200 and fake.calls[-1][2]["refine"] in ("matting", "postprocess")
    else:
        assert r.status_code == 400 and "backgrounds issue (#11)" in r.json()["message"]


def test_url_fetch_is_off_by_default_and_never_private(app, key_file, fake):
    r = app.get("/api/remove", params={"url": "http://127.0.0.1:8080/x.png"}, headers=KEY)
    assert r.status_code == 403 and "--allow-url-host" in r.json()["message"]
    settings = Settings(key_file=key_file, url_hosts=("127.0.0.1", "169.254.169.254", "localhost"))
    with TestClient(create_app(settings, lambda _: fake)) as allowed:
        for url in ("http://127.0.0.1:8080/x.png", "http://169.254.169.254/latest/meta-data", "http://localhost/a"):
            r = allowed.get("/api/remove", params={"url": url}, headers=KEY)
            assert r.status_code == 403 and "never fetched" in r.json()["message"], (url, r.text)
        r = allowed.get("/api/remove", params={"url": "http://example.com/a.png"}, headers=KEY)
        assert r.status_code == 403 and "allow-list" in r.json()["message"]


@pytest.mark.parametrize(
    ("address", "public"),
    [("127.0.0.1", False), ("169.254.169.254", False), ("10.1.2.3", False), ("192.168.0.1", False),
     ("::1", False), ("::ffff:127.0.0.1", False), ("fe80::1", False), ("0.0.0.0", False), ("8.8.8.8", True)],
)  # fmt: skip
def test_public_address(address, public):
    assert public_address(address) is public


def test_fetcher_pins_the_checked_address_follows_checked_redirects_and_caps_size():
    asyncio.run(_fetcher_checks())


async def _fetcher_checks() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"]))
        if request.headers["host"] == "img.example":
            if request.url.path == "/go":
                return httpx.Response(302, headers={"location": "http://evil.example/x"})
            if request.url.path == "/big":
                return httpx.Response(200, content=b"x" * 2000)
            return httpx.Response(200, content=b"image-bytes")
        return httpx.Response(200, content=b"should not be fetched")

    async def resolver(host: str, port: int) -> list[str]:
        return {"img.example": ["93.184.216.34"], "evil.example": ["10.0.0.5"]}[host]

    fetch = Fetcher(("img.example", "*.example"), 1000, 3, resolver=resolver, transport=httpx.MockTransport(handler))
    assert await fetch.get("http://img.example/a.png") == b"image-bytes"
    assert seen[-1] == ("http://93.184.216.34/a.png", "img.example")
    with pytest.raises(HTTPError, match=r"10\.0\.0\.5: private") as refused:
        await fetch.get("http://img.example/go")
    assert refused.value.status == 403 and all("evil" not in url for url, _ in seen)
    with pytest.raises(HTTPError, match="over the limit of 1000 bytes"):
        await fetch.get("http://img.example/big")
    with pytest.raises(HTTPError, match="only http"):
        await fetch.get("file:///etc/passwd")


def test_metrics_need_the_token_and_count_requests(app):
    app.post("/api/remove", files={"file": ("a.png", png())}, headers=KEY)
    assert app.get("/metrics").status_code == 401
    text = app.get("/metrics", headers=KEY).text
    assert re.search(r'u2serve_web_requests_total\{method="POST",route="/api/remove",status="200"\} 1', text)
    assert 'u2serve_web_batch_size_bucket{le="4.0",model="u2net"} 1.0' in text  # /api/remove's default


def test_openapi_and_docs_are_served_offline(app):
    spec = app.get("/openapi.json").json()
    assert {"/api/remove", "/v1/models/{model}/cutout", "/v1/models/{model}/mask", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )
    form = spec["paths"]["/v1/models/{model}/cutout"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"file", "background", "threshold", "crop"} <= set(form["schema"]["properties"])
    assert "docs.js" in app.get("/docs").text
    # Offline: no asset refers to another host.
    for path in STATIC.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path


def test_every_field_row_says_its_group_its_default_and_when_it_applies():
    groups = dict(fields.GROUPS)
    rows = {row.name: row for row in fields.FIELDS}
    for row in fields.FIELDS:
        assert row.group in groups and row.default, row.name
        if row.kind == "choice":  # the page lists the default first, as "<default> (default)"
            assert row.default in (*row.choices, "none"), row.name
        elif row.kind in ("number", "integer") and row.default.replace(".", "").isdigit():
            value = row.parse(row.default)
            assert (row.minimum is None or value >= row.minimum) and (row.maximum is None or value <= row.maximum)
        for alternative in row.when:
            for name, allowed in alternative.items():
                known = {"bool": ("true", "false"), "choice": ("", *rows[name].choices)}.get(rows[name].kind, ("", "*"))
                assert set(allowed) <= set(known), (row.name, name, allowed)
    with pytest.raises(U2NetError, match="accepted: true/false"):
        rows["crop"].parse("maybe")


def shown(row: fields.Field, form: dict[str, str]) -> bool:
    """The page's rule (app.js `applies`): some alternative whose every named row holds an allowed value."""

    def holds(name: str, allowed: tuple[str, ...]) -> bool:
        value = form.get(name, "")
        return value in allowed or (value != "" and "*" in allowed)

    return not row.when or any(all(holds(n, a) for n, a in alt.items()) for alt in row.when)


@pytest.mark.parametrize(
    ("name", "value", "hidden", "visible", "refused"),
    [
        ("matting_erode_size", "5", {}, {"refine": "matting"}, "apply to refine='matting' only"),
        ("threshold", "0.5", {"refine": "matting"}, {"refine": ""}, "give one of them"),
        ("quality", "70", {}, {"output_format": "webp"}, "applies to output_format"),
        ("png_compression", "3", {"output_format": "jpeg"}, {}, "applies to PNG output"),
        ("blur_radius", "4", {"effect": "greyscale"}, {"effect": "blur"}, "applies to effect='blur' only"),
        ("background_fit", "contain", {}, {"background_image": "*"}, "needs a background_image"),
        ("effect", "blur", {"background": "#ffffff"}, {"background": "#ffffff", "background_image": "*"},
         "works on an image behind the subject"),
    ],
)  # fmt: skip
def test_the_page_hides_a_row_where_the_sdk_refuses_it(name, value, hidden, visible, refused):
    from u2net_client.options import Options

    row = next(r for r in fields.FIELDS if r.name == name)
    form = {k: png() if v == "*" else v for k, v in visible.items()}  # a file field holds an image
    assert shown(row, visible) and not shown(row, hidden)
    Options(**fields.parse_fields("cutout", {**form, name: value}))
    with pytest.raises(U2NetError, match=refused):
        Options(**fields.parse_fields("cutout", {**hidden, name: value}))


def test_options_name_the_groups_in_order(app):
    opts = app.get("/v1/options").json()
    assert [g["name"] for g in opts["groups"]] == ["background", "edges", "crop", "output"]
    rows = {f["name"]: f for f in opts["tasks"]["cutout"]}
    assert rows["quality"]["when"] == [{"output_format": ["jpeg", "webp"]}]
    assert rows["threshold"]["default"] == "none (soft edges)" and "placeholder" not in rows["threshold"]


def test_rembg_defaults_are_the_operators_model():
    call = rembg.parse({}, ("u2netp", "u2net"), "u2net")
    assert (call.task, call.model, call.kwargs) == ("cutout", "u2net", {})


def test_uvicorn_serves_on_uvloop_and_httptools(tmp_path):
    # The web extra installs them and uvicorn's "auto" picks them: on a machine the gateway shares with
    # TorchServe, its CPU per request (about half of it in asyncio's and h11's Python code) is the model's loss.
    import uvicorn
    import uvloop
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    config = uvicorn.Config(create_app(Settings(key_file=tmp_path / "key_file.json")))
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert AutoHTTPProtocol is HttpToolsProtocol
