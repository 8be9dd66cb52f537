"""u2net_client: the Python SDK of u2serve, U²-Net background removal on TorchServe.

    >>> from u2net_client import U2NetClient
    >>> with U2NetClient() as client:
    ...     client.cutout("photo.jpg").image.save("photo.png")

`AsyncU2NetClient` has the same methods for asyncio. Every failure raises `U2NetError`, whose
`.code` is a `grpc.StatusCode`.
"""

from u2net_client._auth import DEFAULT_KEY_FILE, KEY_FILE_ENV
from u2net_client._errors import U2NetError
from u2net_client._retry import RetryPolicy
from u2net_client._sync import U2NetClient
from u2net_client._types import Box, CutoutResult, MaskResult, ModelInfo, WorkerInfo
from u2net_client._v2 import ModelMetadata, TensorSpec
from u2net_client.aio import AsyncU2NetClient
from u2net_client.options import Color, CutoutKeywords, MaskKeywords, Options
from u2serve import __version__
from u2serve.apps.video import FORMATS as VIDEO_FORMATS
from u2serve.apps.video import VideoResult
from u2serve.core.image import ImageInput

__all__ = [
    "DEFAULT_KEY_FILE",
    "KEY_FILE_ENV",
    "VIDEO_FORMATS",
    "AsyncU2NetClient",
    "Box",
    "Color",
    "CutoutKeywords",
    "CutoutResult",
    "ImageInput",
    "MaskKeywords",
    "MaskResult",
    "ModelInfo",
    "ModelMetadata",
    "Options",
    "RetryPolicy",
    "TensorSpec",
    "U2NetClient",
    "U2NetError",
    "VideoResult",
    "WorkerInfo",
    "__version__",
]
