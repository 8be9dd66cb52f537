"""Token authorization: find the server's key file or take tokens, and give each API its own key.

TorchServe reads `authorization: Bearer <key>`. Triton (tools/triton.py) restricts its gRPC API groups
with the same header, which a gRPC client sends as `triton-grpc-protocol-authorization`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from u2net_client._errors import U2NetError

KEY_FILE_ENV = "U2SERVE_KEY_FILE"
# `make serve` runs TorchServe in var/, where it writes key_file.json at every start.
DEFAULT_KEY_FILE = Path("var") / "key_file.json"
# `make triton` runs Triton in var/triton/ and writes its keys there, in TorchServe's format.
TRITON_KEY_FILE = Path("var") / "triton" / "key_file.json"
# Triton's gRPC endpoint reads a restricted API group's header under this prefix.
TRITON_HEADER_PREFIX = "triton-grpc-protocol-"

Metadata = tuple[tuple[str, str], ...]


def find_key_file(
    key_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: tuple[Path, ...] = (DEFAULT_KEY_FILE,),
) -> Path | None:
    """The key file to use: `key_file`, else $U2SERVE_KEY_FILE, else the first of `defaults` that exists
    (./var/key_file.json; for Triton's protocols ./var/triton/key_file.json first).

    Raises:
        U2NetError: INVALID_ARGUMENT when a file named explicitly (argument or variable) does not exist.
    """
    env = os.environ if environ is None else environ
    named, origin = (key_file, "key_file") if key_file is not None else (env.get(KEY_FILE_ENV) or None, KEY_FILE_ENV)
    if named is not None:
        path = Path(named).expanduser()
        if not path.is_file():
            raise U2NetError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{origin}={str(named)!r}: no such file; TorchServe writes key_file.json into its working "
                "directory (var/ for `make serve`), tools/triton.py into its home (var/triton/ for `make triton`)",
            )
        return path
    return next((path for path in defaults if path.is_file()), None)


@dataclass
class Credentials:
    """The keys for the inference and management APIs, from tokens or a key file.

    Explicit tokens win; a key file is re-read when it changes, so a client outlives a server restart.
    """

    inference_token: str | None = None
    management_token: str | None = None
    key_file: Path | None = None
    triton: bool = False  # also send the key under Triton's gRPC header name
    _loaded: tuple[float, dict[str, str]] | None = None

    @classmethod
    def resolve(
        cls,
        token: str | None = None,
        management_token: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        triton: bool = False,
    ) -> Credentials:
        """Tokens as given; the key file is looked for only if a token is missing.

        With `triton` (protocols "v2" and "triton"), var/triton/key_file.json is looked for first, and
        the key goes under Triton's header name as well as TorchServe's.
        """
        defaults = (TRITON_KEY_FILE, DEFAULT_KEY_FILE) if triton else (DEFAULT_KEY_FILE,)
        both = token is not None and management_token is not None
        path = None if both else find_key_file(key_file, environ, defaults)
        return cls(token, management_token, path, triton)

    def metadata(self, api: str) -> Metadata:
        """gRPC metadata for calls to `api` ("inference" or "management"); empty without a key."""
        explicit = self.inference_token if api == "inference" else self.management_token
        key = explicit if explicit is not None else self._keys().get(api)
        if not key:
            return ()
        header = ("authorization", f"Bearer {key}")
        return (header, (TRITON_HEADER_PREFIX + header[0], header[1])) if self.triton else (header,)

    def describe(self, api: str) -> str:
        """Where the key for `api` comes from, for error messages."""
        explicit = self.inference_token if api == "inference" else self.management_token
        if explicit is not None:
            return f"the {'token' if api == 'inference' else 'management_token'} given"
        if self.key_file is not None:
            return f"the {api} key from {self.key_file}"
        found = f"{TRITON_KEY_FILE} nor {DEFAULT_KEY_FILE}" if self.triton else str(DEFAULT_KEY_FILE)
        return f"no token: no key file given, ${KEY_FILE_ENV} unset, and no {found} here"

    def _keys(self) -> dict[str, str]:
        if self.key_file is None:
            return {}
        try:
            mtime = self.key_file.stat().st_mtime
            if self._loaded is None or self._loaded[0] != mtime:
                self._loaded = (mtime, parse_key_file(self.key_file.read_text()))
        except (OSError, ValueError) as exc:
            raise U2NetError(
                grpc.StatusCode.UNAUTHENTICATED, f"cannot read the key file {self.key_file}: {exc}"
            ) from exc
        return self._loaded[1]


def parse_key_file(text: str) -> dict[str, str]:
    """{"inference": key, "management": key, ...} from TorchServe's key_file.json text."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return {api: str(entry["key"]) for api, entry in raw.items() if isinstance(entry, dict) and "key" in entry}
