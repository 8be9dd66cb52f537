"""rembg's Python API, `remove` and `new_session`, served by u2serve: change the import, keep the calls.

    >>> from u2net_client.rembg import new_session, remove
    >>> with new_session("u2net") as session, open("photo.jpg", "rb") as f:
    ...     png = remove(f.read(), session=session)

The arguments, defaults and return types are rembg 2.0's (`rembg.bg.remove`); the work runs on the
server through `U2NetClient`:

| rembg | here |
| --- | --- |
| `new_session("u2net")` / `("u2netp")` | a `U2NetSession` naming the served model, holding a `U2NetClient` |
| `only_mask` | the SDK's `mask`; `bgcolor` and `alpha_matting` ignored, as rembg does |
| `post_process_mask` | `refine="postprocess"`, for the mask and the cutout alike |
| both of them | the post-processed mask from the server, matted here (the server refines once) |
| `alpha_matting` and its three knobs | `refine="matting"` with the SDK's three `matting_*` knobs |
| `bgcolor` (r, g, b, 255) | `background=(r, g, b)`, the RGB result taken to RGBA as rembg returns it |
| `bgcolor` (r, g, b, a < 255) | the RGBA cutout composited over the colour here (the server's are opaque) |
"""

from __future__ import annotations

import io
import os
import threading
from types import TracebackType

import grpc
import numpy as np
from PIL import Image

from u2net_client._base import DEFAULT_MANAGEMENT_TARGET, DEFAULT_TARGET, DEFAULT_TIMEOUT
from u2net_client._errors import U2NetError, raises_sdk_errors
from u2net_client._sync import U2NetClient
from u2net_client._types import CutoutResult, MaskResult
from u2net_client.options import Options
from u2serve.core import compose, imaging
from u2serve.core.image import image_bytes

MODELS = ("u2net", "u2netp")
"""The rembg session names u2serve serves."""

RemoveInput = bytes | bytearray | memoryview | Image.Image | np.ndarray
"""What `remove` takes: encoded image bytes, a PIL image, or an image as a numpy array."""

RemoveOutput = bytes | Image.Image | np.ndarray
"""What `remove` returns: PNG bytes, a PIL image, or a numpy array, following the input (see `remove`)."""

_default_lock = threading.Lock()
_default_session: U2NetSession | None = None


class U2NetSession:
    """A rembg session whose model runs on u2serve: the model's name and the client that reaches it.

    Made by `new_session`; closing it closes the client it made (never one it was given).

    Attributes:
        model_name: The served model, "u2net" or "u2netp" (rembg's attribute of the same name).
        client: The `U2NetClient` the calls go through.
    """

    def __init__(self, model_name: str, client: U2NetClient, *, owns_client: bool) -> None:
        self.model_name = model_name
        self.client = client
        self._owns_client = owns_client

    def __repr__(self) -> str:
        return f"U2NetSession({self.model_name!r}, target={self.client.target!r})"

    def __enter__(self) -> U2NetSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client, if this session made it."""
        if self._owns_client:
            self.client.close()

    @raises_sdk_errors
    def predict(self, img: Image.Image) -> list[Image.Image]:
        """The served mask of `img`, as rembg's `session.predict` returns it.

        Args:
            img: A PIL image.

        Returns:
            One mask, mode "L", the size of `img` as displayed.

        Raises:
            U2NetError: As `U2NetClient.mask` does.
        """
        return [self.client.mask(img, self.model_name).image]


@raises_sdk_errors
def new_session(
    model_name: str = "u2net",
    *,
    client: U2NetClient | None = None,
    target: str = DEFAULT_TARGET,
    management_target: str = DEFAULT_MANAGEMENT_TARGET,
    key_file: str | os.PathLike[str] | None = None,
    token: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> U2NetSession:
    """A session for `remove`, as rembg's `new_session`, served by u2serve.

    Args:
        model_name: The served model: "u2net" (rembg's default) or "u2netp".
        client: An existing client to use; the session then leaves closing it to its owner, and the
            connection arguments below must be left out.
        target: host:port of the gRPC inference API; the SDK's default otherwise.
        management_target: host:port of the gRPC management API.
        key_file: TorchServe's key_file.json; by default the SDK's ($U2SERVE_KEY_FILE, else
            ./var/key_file.json if it exists).
        token: The inference key, instead of the key file.
        timeout: Deadline of each call in seconds; None waits forever.

    Returns:
        A `U2NetSession`; close it, or use it in a `with` block, to close the client it made.

    Raises:
        ValueError: For a model u2serve does not serve, or connection arguments given with `client`.
        U2NetError: INVALID_ARGUMENT for connection settings that cannot work (a missing key file).
    """
    if model_name not in MODELS:
        raise ValueError(f"No session class found for model {model_name!r}; u2serve serves {', '.join(MODELS)}")
    if client is not None:
        given = {
            "target": target != DEFAULT_TARGET,
            "management_target": management_target != DEFAULT_MANAGEMENT_TARGET,
            "key_file": key_file is not None,
            "token": token is not None,
            "timeout": timeout != DEFAULT_TIMEOUT,
        }
        if clash := [name for name, set_ in given.items() if set_]:
            raise ValueError(f"{', '.join(clash)} configure a new client; leave them out when passing client=")
        return U2NetSession(model_name, client, owns_client=False)
    made = U2NetClient(target, management_target, token=token, key_file=key_file, timeout=timeout)
    return U2NetSession(model_name, made, owns_client=True)


def default_session() -> U2NetSession:
    """The process's "u2net" session with the SDK's default connection, made on first use (rembg's
    `remove` without a session calls `new_session()` each time; one client per process serves the same)."""
    global _default_session
    with _default_lock:
        if _default_session is None:
            _default_session = new_session()
        return _default_session


@raises_sdk_errors
def remove(
    data: RemoveInput,
    alpha_matting: bool = False,
    alpha_matting_foreground_threshold: int = 240,
    alpha_matting_background_threshold: int = 10,
    alpha_matting_erode_size: int = 10,
    session: U2NetSession | None = None,
    only_mask: bool = False,
    post_process_mask: bool = False,
    bgcolor: tuple[int, int, int, int] | None = None,
    force_return_bytes: bool = False,
    *,
    putalpha: bool = False,
) -> RemoveOutput:
    """rembg's `remove`, served: the background of an image removed, or its mask.

    Args:
        data: Encoded image bytes, a PIL image or a numpy array (as `Image.fromarray` takes it). EXIF
            orientation is applied on the server, as rembg applies it.
        alpha_matting: Refine the cutout's edges by alpha matting: `refine="matting"`.
        alpha_matting_foreground_threshold: `matting_foreground_threshold` (mask level, 0..255).
        alpha_matting_background_threshold: `matting_background_threshold` (below the foreground one).
        alpha_matting_erode_size: `matting_erode_size` (pixels, 0..100).
        session: From `new_session`; None uses one "u2net" session per process (`default_session`).
        only_mask: Return the mask (the SDK's `mask` task) instead of the cutout; rembg ignores
            `alpha_matting` and `bgcolor` then, and so does this.
        post_process_mask: Smooth the mask as rembg does: `refine="postprocess"`. With `only_mask` the
            post-processed mask comes back. With `alpha_matting` too, rembg mattes the post-processed mask:
            the server post-processes it and the matting runs in this process (the server refines once),
            which needs OpenCV and pymatting here, as rembg does.
        bgcolor: (r, g, b, a) behind the cutout; the result stays RGBA, as rembg's does. Alpha 255 is
            composited by the server (`background=(r, g, b)`), any other alpha here.
        force_return_bytes: Return PNG bytes whatever the input (rembg 2.0.69 accepts only bytes then).
        putalpha: rembg's keyword to keep the input's colours where the alpha is partial instead of
            darkening them towards black; served cutouts always keep them (straight alpha), so it changes
            nothing.

    Returns:
        As rembg: for bytes (or `force_return_bytes`), PNG bytes; for a PIL image, a PIL image; for an
        array, a uint8 array. A cutout is RGBA (H, W, 4); a mask is "L" (H, W). The size is the input's
        as displayed.

    Raises:
        ValueError: For an input of another type, or a session that is not from `new_session`.
        U2NetError: From the server or the SDK: INVALID_ARGUMENT for an unreadable image or an option out
            of range, NOT_FOUND for a model the server lacks, UNAVAILABLE when it cannot be reached.
    """
    del putalpha  # accepted for rembg's callers; see the docstring
    image = _as_image_input(data)
    session = _session(session)
    if only_mask:
        refine = "postprocess" if post_process_mask else None
        return _output(session.client.mask(image, session.model_name, refine=refine), data, force_return_bytes)
    color = _color(bgcolor)
    opaque = None if color is None or color[3] != 255 else color[:3]
    if alpha_matting:
        knobs = (alpha_matting_foreground_threshold, alpha_matting_background_threshold, alpha_matting_erode_size)
        cutout = _matted(session, image, knobs, post_process_mask, opaque)
    else:
        refine = "postprocess" if post_process_mask else None
        cutout = session.client.cutout(image, session.model_name, background=opaque, refine=refine)
    if color is not None and opaque is None:
        # The server composites opaque colours only; rembg's alpha_composite over a translucent one, here.
        rgba = cutout if isinstance(cutout, Image.Image) else cutout.image
        cutout = Image.alpha_composite(Image.new("RGBA", rgba.size, color), rgba.convert("RGBA"))
    return _output(cutout, data, force_return_bytes)


def _matted(
    session: U2NetSession,
    image: bytes | Image.Image,
    knobs: tuple[int, int, int],
    post_process_mask: bool,
    background: tuple[int, int, int] | None,
) -> CutoutResult | Image.Image:
    """rembg's alpha-matting cutout, over an opaque background when one is given.

    The server refines a mask once, either way; rembg mattes the post-processed mask when both are asked
    for, so then the server post-processes the mask and the matting runs here, with the SDK's own compose
    (as its "triton" protocol does), on the image decoded as the server decodes it.
    """
    fg, bg, erode = knobs
    if not post_process_mask:
        return session.client.cutout(
            image, session.model_name, background=background, refine="matting",
            matting_foreground_threshold=fg, matting_background_threshold=bg, matting_erode_size=erode,
        )  # fmt: skip
    options = Options(
        background, refine="matting", matting_foreground_threshold=fg, matting_background_threshold=bg,
        matting_erode_size=erode,
    )  # fmt: skip
    mask = session.client.mask(image, session.model_name, refine="postprocess").array
    decoded = imaging.decode_image(image_bytes(image), imaging.DEFAULT_MAX_PIXELS)
    out, _ = compose.compose(decoded, mask, False, options)
    return Image.fromarray(out)


def _as_image_input(data: object) -> bytes | Image.Image:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, Image.Image):
        return data
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    raise ValueError(f"Input type {type(data)} is not supported; accepted: bytes, a PIL image or a numpy array")


def _session(session: object) -> U2NetSession:
    if session is None:
        return default_session()
    if not isinstance(session, U2NetSession):
        raise ValueError(
            f"session of type {type(session).__name__}; pass one from u2net_client.rembg.new_session "
            "(a rembg session runs its model in this process, not on u2serve)"
        )
    return session


def _color(bgcolor: tuple[int, ...] | None) -> tuple[int, int, int, int] | None:
    """(r, g, b, a) from rembg's bgcolor; an (r, g, b) is opaque, as PIL fills it in for rembg."""
    if bgcolor is None:
        return None
    parts = tuple(bgcolor)
    if len(parts) == 3:
        parts = (*parts, 255)
    if len(parts) != 4 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in parts):
        raise U2NetError(
            grpc.StatusCode.INVALID_ARGUMENT, f"bgcolor={bgcolor!r}; accepted: (r, g, b, a) with 0-255 each"
        )
    return (parts[0], parts[1], parts[2], parts[3])


def _output(result: MaskResult | CutoutResult | Image.Image, data: object, force_bytes: bool) -> RemoveOutput:
    """The result in rembg's type for this input: PNG bytes, a PIL image or an array; "L" or "RGBA"."""
    mode = "L" if isinstance(result, MaskResult) else "RGBA"
    as_bytes = force_bytes or isinstance(data, (bytes, bytearray, memoryview))
    if as_bytes and not isinstance(result, Image.Image) and result.media_type == "image/png":
        with Image.open(io.BytesIO(result.data)) as png:
            if png.mode == mode:  # the server's PNG is what rembg would write: hand it on as it is
                return result.data
    image = result if isinstance(result, Image.Image) else result.image
    if image.mode != mode:
        image = image.convert(mode)
    if as_bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(data, np.ndarray):
        return np.asarray(image)
    # A plain Image, as rembg's: a decoded file's subclass carries the server's PNG as its format and info.
    return image if type(image) is Image.Image else image.copy()
