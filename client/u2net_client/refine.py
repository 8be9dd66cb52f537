"""`u2serve.core.refine`, kept importable as `u2net_client.refine` (its functions raise the core's CoreError)."""

from u2serve.core.refine import *  # noqa: F403
