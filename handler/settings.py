"""The handler's configuration, read once from the TorchServe context and checked where it enters."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import u2serve.core
from handler.engine import EngineError, kind
from handler.model import VARIANTS, Variant
from u2serve.core import imaging

# Written by handler/build.py into every archive: which variant, where its weights came from.
ARCHIVE_INFO = "u2serve.json"

# 25 MP: a 6000x4000 photo fits. A request's buffers (RGB, mask, RGBA output, PNG buffer) come to about
# 12 bytes per pixel, so ~300 MB at the limit; a full batch of 8 such images stays under 3 GB.
DEFAULT_MAX_PIXELS = imaging.DEFAULT_MAX_PIXELS
# zlib level 1: much faster to encode than Pillow's default 6, for somewhat larger files.
DEFAULT_PNG_COMPRESSION = imaging.DEFAULT_PNG_COMPRESSION


log = logging.getLogger(__name__)

# glibc's malloc arenas for a worker process (mallopt M_ARENA_MAX). Each thread that allocates may get an
# arena of its own (up to 8 per core), and the freed activations, pixel buffers and PNGs left in each grow
# the resident set: a U2NETP bf16 worker serving the 8 largest reference images as one batch with two
# engine streams (handler.streams: 2) and the pixel threads peaked lower with 2 arenas (2 cores) than with
# glibc's default, and lower again with one stream, the default. One arena holds less again: an OpenVINO
# worker (2-core Zen 3) that had run a 6 MP matting peaked lower on those batches of 8 than with 2 arenas,
# at the same speed (8 callers in runs alternating between the two, and a lone 6 MP cutout's server time).
# tests/test_memory.py measures the served worker's peak.
MALLOC_ARENAS = 1
_M_ARENA_MAX = -8  # glibc's <malloc.h>


class SettingsError(ValueError):
    """A handler setting in model-config.yaml or the archive that cannot work."""


# The installed u2serve.core the handler runs (the pixel pipeline, options, errors and the wire format): the
# archive carries the handler's code but not these, so it records which ones it was built with, and a worker
# with others refuses to start instead of serving with a pipeline nobody tested with it. Every module of the
# package, and of the generated ones the message the handler reads and writes.
WIRE_MODULE = "_generated/u2serve_pb2.py"


def core_modules() -> list[Path]:
    """The source files of the installed u2serve.core that `core_version` digests, in a fixed order."""
    root = Path(u2serve.core.__file__).resolve().parent
    return [*sorted(root.glob("*.py")), root / WIRE_MODULE]


def core_version() -> str:
    """The installed core: the u2serve distribution's version and a digest of `core_modules`' source."""
    root = Path(u2serve.core.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in core_modules():
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        version = importlib.metadata.version("u2serve")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"{version}+{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class ArchiveInfo:
    variant: Variant
    weights: str  # origin of the weights, shown to clients
    device_traced: str  # device the TorchScript was traced on
    core: str = field(default_factory=core_version)  # the core the archive was built (and tested) with

    @classmethod
    def read(cls, model_dir: Path) -> ArchiveInfo:
        path = model_dir / ARCHIVE_INFO
        try:
            raw = json.loads(path.read_text())
            variant = VARIANTS[raw["variant"]]
            core = str(raw.get("core", "none recorded"))
            return cls(variant, str(raw["weights"]), str(raw.get("device_traced", "cpu")), core)
        except (OSError, ValueError, KeyError) as exc:
            raise SettingsError(f"{path}: unreadable archive info ({exc}); rebuild the archive") from exc

    def write(self, model_dir: Path) -> None:
        info = {"variant": self.variant.name, "weights": self.weights, "device_traced": self.device_traced,
                "core": self.core}  # fmt: skip
        (model_dir / ARCHIVE_INFO).write_text(json.dumps(info, indent=2) + "\n")

    def check_core(self, installed: str | None = None) -> None:
        """Raises SettingsError, naming both versions and how to rebuild, when the installed core is not the
        one this archive was built with."""
        installed = installed or core_version()
        if installed != self.core:
            raise SettingsError(
                f"this archive was built with u2serve core {self.core}, but the worker's Python has {installed}: "
                "rebuild the archive with the installed package (make archives, or python -m handler.build), "
                "or install the u2serve the archive was built with"
            )


@dataclass(frozen=True)
class HandlerSettings:
    """The `handler:` section of model-config.yaml."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    png_compression: int = DEFAULT_PNG_COMPRESSION
    threads: int = 0  # intra-op threads per worker; 0: the worker's share of the cores
    engine: str = "torchscript"  # a handler.engine.ENGINES key
    # Images of a CPU batch run side by side, sharing the threads (handler.engine.Streams): faster, and
    # more peak memory for each extra image, whose activations are held at once; 1 runs them one after
    # the other.
    streams: int = 1

    @classmethod
    def from_yaml(cls, section: Mapping[str, Any] | None) -> HandlerSettings:
        section = dict(section or {})
        known = ("max_pixels", "png_compression", "threads", "engine", "streams")
        unknown = set(section) - set(known)
        if unknown:
            raise SettingsError(f"unknown handler settings {sorted(unknown)}; known: {', '.join(known)}")
        engine_name = str(section.pop("engine", cls.engine))
        try:
            kind(engine_name)
        except EngineError as exc:
            raise SettingsError(f"handler.engine: {exc}") from exc
        try:
            settings = cls(**{k: int(v) for k, v in section.items()}, engine=engine_name)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"handler settings must be integers besides engine: {exc}") from exc
        if settings.max_pixels < 1:
            raise SettingsError(f"handler.max_pixels={settings.max_pixels}; must be at least 1")
        if not 0 <= settings.png_compression <= 9:
            raise SettingsError(f"handler.png_compression={settings.png_compression}; must be 0..9")
        if settings.threads < 0:
            raise SettingsError(f"handler.threads={settings.threads}; must be >= 0 (0: torch's default)")
        if settings.streams < 1:
            raise SettingsError(f"handler.streams={settings.streams}; must be >= 1 (1: one image after the other)")
        return settings


def worker_threads(configured: int, workers: int) -> int:
    """Threads for one worker: the configured number, else its share of the cores this process may use."""
    if configured:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Caps glibc's malloc arenas for this process (what MALLOC_ARENA_MAX does at start), before the worker's
    threads allocate. False where the C library is not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this C library: malloc arenas left at their default")
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
