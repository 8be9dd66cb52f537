"""`u2serve.core.compose`, kept importable as `u2net_client.compose` (its functions raise the core's CoreError)."""

from u2serve.core.compose import *  # noqa: F403
