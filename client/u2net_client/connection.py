"""Where the SDK connects by default and how it reads TorchServe's keys, for applications built over it.

The command line and the web gateway take the same defaults as `U2NetClient` and read the same key file;
they import them from here rather than from the SDK's private modules.
"""

from u2net_client._auth import DEFAULT_KEY_FILE, KEY_FILE_ENV, parse_key_file
from u2net_client._base import DEFAULT_MANAGEMENT_TARGET, DEFAULT_TARGET, DEFAULT_TIMEOUT, MAX_SEND_BYTES

__all__ = [
    "DEFAULT_KEY_FILE",
    "DEFAULT_MANAGEMENT_TARGET",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "KEY_FILE_ENV",
    "MAX_SEND_BYTES",
    "parse_key_file",
]
