"""u2serve: U²-Net background removal served on TorchServe and Triton.

The distribution's layers, each a package (docs/development.md, "Layout"): `u2serve.core` (options, the
pixel pipeline, errors and the wire format, no transport), `u2net_client` (the gRPC SDK over the core),
`u2serve.apps` (the command line, video and evaluation over the SDK), `u2serve.web` (the HTTP gateway
over the SDK) and, outside this distribution's client folder, `handler` (the server over the core).
"""

__version__ = "0.1.0"
