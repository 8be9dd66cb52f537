"""`python -m u2serve.web`: serve the page and the HTTP APIs with uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from u2serve.web.app import create_app
from u2serve.web.settings import SettingsError, from_args, parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = from_args(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # One process, one event loop, one gRPC channel: concurrency comes from asyncio, batching from TorchServe.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
