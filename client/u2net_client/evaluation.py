"""`u2serve.apps.evaluation`, kept importable as `u2serve.apps.evaluation`."""

from u2serve.apps.evaluation import *  # noqa: F403
