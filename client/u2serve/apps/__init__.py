"""The applications over the SDK: the `u2net-client` command line, video and evaluation."""
