"""`u2serve.core.imaging`, kept importable as `u2net_client.imaging` (its functions raise the core's CoreError)."""

from u2serve.core.imaging import *  # noqa: F403
