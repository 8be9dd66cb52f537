"""The options of an SDK call: `u2serve.core.options`, whose `Options` here raises U2NetError for a bad value.

Kept for `from u2net_client.options import ...`; the definitions and their documentation live in the core.
"""

from __future__ import annotations

from u2net_client._errors import sdk_errors
from u2serve.core import options as _core
from u2serve.core.options import *  # noqa: F403


class Options(_core.Options):
    """The options of a segment call: every field as `u2serve.core.options.Options` defines and checks it,
    a bad value raising the SDK's error instead of the core's.

    Raises:
        U2NetError: INVALID_ARGUMENT naming the option and what is accepted.
    """

    def __post_init__(self) -> None:
        with sdk_errors():
            super().__post_init__()

    def check_task(self, mask: bool) -> None:
        with sdk_errors():
            super().check_task(mask)
