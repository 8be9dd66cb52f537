"""What the SDK and the server share: options, the pixel pipeline, errors and the wire format; no transport."""
