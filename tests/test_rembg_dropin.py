"""u2net_client.rembg against rembg 2.0.69 itself: the same calls, the same types, modes and sizes, close masks.

rembg runs in process on the same weight files as the served archives (U2NET_HOME); ours runs on the session's
TorchServe. The masks differ slightly because rembg resizes with LANCZOS where the server follows the authors.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

import u2net_client
from handler import sources
from u2net_client import U2NetClient, U2NetError
from u2net_client.rembg import U2NetSession, default_session, new_session, remove

# Mean absolute error on the 0..1 scale between rembg's mask (or cutout alpha) and ours.
MASK_MAE = 0.01
# Colours over a bgcolor differ more than the alpha: rembg composites its cutout, whose colours are already
# multiplied by the alpha, as if they were not (the edges darken); the server blends the input's colours once.
COLOUR_MAE = 0.02
MODELS = ("u2netp", "u2net")

# (image, input type, remove()'s keywords): small reference images, so matting stays quick in both.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("girl.png", "bytes", {}),
    ("0003.jpg", "pil", {}),
    ("horse.jpg", "ndarray", {}),
    ("im_14.png", "bytes", {"only_mask": True}),
    ("girl.png", "pil", {"only_mask": True}),
    ("0003.jpg", "ndarray", {"only_mask": True}),
    ("horse.jpg", "bytes", {"post_process_mask": True}),
    ("im_14.png", "pil", {"only_mask": True, "post_process_mask": True}),
    ("0003.jpg", "pil", {"alpha_matting": True}),
    (
        "girl.png",
        "bytes",
        {
            "alpha_matting": True,
            "alpha_matting_foreground_threshold": 200,
            "alpha_matting_background_threshold": 30,
            "alpha_matting_erode_size": 5,
        },
    ),
    ("im_14.png", "ndarray", {"alpha_matting": True, "only_mask": True, "post_process_mask": True}),
    ("horse.jpg", "pil", {"alpha_matting": True, "post_process_mask": True}),
    ("0003.jpg", "bytes", {"bgcolor": (255, 255, 255, 255)}),
    ("girl.png", "ndarray", {"bgcolor": (0, 0, 255, 128)}),
    ("horse.jpg", "bytes", {"force_return_bytes": True}),
]


def _id(case: tuple[str, str, dict[str, Any]]) -> str:
    name, kind, kwargs = case
    return "-".join([Path(name).stem, kind, *(k.replace("alpha_matting_", "") for k in kwargs)])


@pytest.fixture(scope="module")
def rembg():
    # rembg reads U2NET_HOME when a session loads its file: the published files, already checked, no download.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("U2NET_HOME", str(sources.rembg_home()))
        import rembg

        yield rembg


@pytest.fixture(scope="module")
def rembg_sessions(rembg) -> dict[str, Any]:
    return {model: rembg.new_session(model) for model in MODELS}


@pytest.fixture(scope="module")
def sessions(server):
    made = {
        model: new_session(
            model,
            target=server.grpc_target,
            management_target=server.grpc_management_target,
            key_file=server.key_file,
            timeout=300,
        )
        for model in MODELS
    }
    yield made
    for session in made.values():
        session.close()


def as_input(path: Path, kind: str) -> bytes | Image.Image | np.ndarray:
    if kind == "bytes":
        return path.read_bytes()
    image = Image.open(path)
    image.load()
    return image if kind == "pil" else np.asarray(image)


def as_array(output: bytes | Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(output, bytes):
        output = Image.open(io.BytesIO(output))
    return np.asarray(output)


def mode_of(output: bytes | Image.Image) -> str:
    return Image.open(io.BytesIO(output)).mode if isinstance(output, bytes) else output.mode


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_remove_matches_rembg(rembg, rembg_sessions, sessions, reference_dir, model, case, record_property):
    name, kind, kwargs = case
    path = reference_dir / "images" / name
    theirs = rembg.remove(as_input(path, kind), session=rembg_sessions[model], **kwargs)
    ours = remove(as_input(path, kind), session=sessions[model], **kwargs)

    assert type(ours) is type(theirs)
    if isinstance(theirs, np.ndarray):
        assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype)
    else:
        assert (mode_of(ours), as_array(ours).shape) == (mode_of(theirs), as_array(theirs).shape)
        assert mode_of(ours) == ("L" if kwargs.get("only_mask") else "RGBA")
    a, b = as_array(ours), as_array(theirs)
    error = mae(a, b) if a.ndim == 2 else mae(a[..., 3], b[..., 3])
    record_property("mask_mae", round(error, 4))
    assert error <= MASK_MAE
    if "bgcolor" in kwargs:
        colour_error = mae(a[..., :3], b[..., :3])
        record_property("colour_mae", round(colour_error, 4))
        assert colour_error <= COLOUR_MAE


def test_force_return_bytes_takes_any_input(rembg, rembg_sessions, sessions, reference_dir):
    # rembg 2.0.69 reads every input as encoded bytes under force_return_bytes (a PIL image fails there);
    # ours returns the PNG of what the input's own type would have given.
    image = as_input(reference_dir / "images" / "girl.png", "pil")
    theirs = rembg.remove(image, session=rembg_sessions["u2netp"])
    png = remove(image, session=sessions["u2netp"], force_return_bytes=True)
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    assert mode_of(png) == theirs.mode == "RGBA" and Image.open(io.BytesIO(png)).size == theirs.size
    assert mae(as_array(png)[..., 3], np.asarray(theirs)[..., 3]) <= MASK_MAE


def test_session_predict_gives_rembgs_mask(rembg_sessions, sessions, reference_dir):
    image = as_input(reference_dir / "images" / "0003.jpg", "pil")
    (theirs,) = rembg_sessions["u2net"].predict(image)
    (ours,) = sessions["u2net"].predict(image)
    assert (ours.mode, ours.size) == (theirs.mode, theirs.size) == ("L", image.size)
    assert mae(np.asarray(ours), np.asarray(theirs)) <= MASK_MAE


def test_unreadable_bytes_raise_invalid_argument(sessions):
    with pytest.raises(U2NetError, match="not a recognised image") as info:
        remove(b"this is not an image", session=sessions["u2netp"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bad_bgcolor_raises_invalid_argument(sessions, reference_dir):
    with pytest.raises(U2NetError, match=r"bgcolor=\(0, 0, 300, 255\); accepted") as info:
        remove(
            (reference_dir / "images" / "girl.png").read_bytes(), session=sessions["u2netp"], bgcolor=(0, 0, 300, 255)
        )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_model_name_fails_clearly():
    with pytest.raises(ValueError, match=r"'isnet-general-use'; u2serve serves u2net, u2netp"):
        new_session("isnet-general-use")


def test_a_rembg_session_is_refused(rembg_sessions):
    with pytest.raises(ValueError, match=r"pass one from u2net_client\.rembg\.new_session"):
        remove(b"", session=rembg_sessions["u2netp"])


def test_unsupported_input_types_fail_as_in_rembg():
    with pytest.raises(ValueError, match="Input type <class 'str'> is not supported"):
        remove("photo.jpg")


def test_sessions_close_only_the_client_they_made(server):
    client = U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file, timeout=60)
    with new_session("u2netp", client=client) as borrowed:
        assert borrowed.client is client and borrowed.model_name == "u2netp"
    assert client.ping()  # still open
    client.close()
    with pytest.raises(ValueError, match="target configure a new client"):
        new_session("u2net", client=client, target="127.0.0.1:1")


def test_the_default_session_is_one_u2net_session_with_the_sdks_connection():
    session = default_session()
    assert isinstance(session, U2NetSession) and session is default_session()
    assert session.model_name == "u2net"
    defaults = inspect.signature(U2NetClient).parameters
    assert session.client.target == defaults["target"].default
    assert session.client.management_target == defaults["management_target"].default


def test_the_package_exports_it_as_a_submodule_only():
    assert not {"remove", "new_session", "U2NetSession"} & set(u2net_client.__all__)
    assert u2net_client.rembg.remove is remove
