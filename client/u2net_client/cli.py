"""`u2serve.apps.cli`, the `u2net-client` command line, kept importable as `u2net_client.cli`."""

from u2serve.apps.cli import *  # noqa: F403
