"""U²-Net (Qin et al., Pattern Recognition 2020): RSU blocks, the nested U-Net, and its variants as data.

Module and parameter names follow the authors' code, so their `u2net.pth` / `u2netp.pth` state dicts
load as they are. `fuse_batchnorm` folds each BatchNorm into its convolution for inference, which is
also the form rembg's ONNX files ship in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from u2serve.core import imaging


@dataclass(frozen=True)
class Variant:
    """One U²-Net size. Stages list (in_ch, mid_ch, out_ch) in the order of the authors' code."""

    name: str
    encoder: tuple[tuple[int, int, int], ...]  # stage1..stage6
    decoder: tuple[tuple[int, int, int], ...]  # stage5d..stage1d
    input_size: int = imaging.INPUT_SIZE
    mean: tuple[float, float, float] = imaging.MEAN
    std: tuple[float, float, float] = imaging.STD

    @property
    def side_channels(self) -> tuple[int, ...]:
        """Channels feeding side1..side6: stage1d..stage5d outputs, then stage6's."""
        decoder_out = [out for _, _, out in reversed(self.decoder)]
        return (*decoder_out, self.encoder[-1][2])


VARIANTS: dict[str, Variant] = {
    "u2net": Variant(
        name="u2net",
        encoder=((3, 32, 64), (64, 32, 128), (128, 64, 256), (256, 128, 512), (512, 256, 512), (512, 256, 512)),
        decoder=((1024, 256, 512), (1024, 128, 256), (512, 64, 128), (256, 32, 64), (128, 16, 64)),
    ),
    "u2netp": Variant(
        name="u2netp",
        encoder=((3, 16, 64), (64, 16, 64), (64, 16, 64), (64, 16, 64), (64, 16, 64), (64, 16, 64)),
        decoder=((128, 16, 64), (128, 16, 64), (128, 16, 64), (128, 16, 64), (128, 16, 64)),
    ),
}

# RSU depth of each stage: stage1..stage6 (encoder) and stage5d..stage1d (decoder). 0 marks RSU-4F,
# the dilated block without pooling used where the feature maps are already small.
ENCODER_DEPTHS = (7, 6, 5, 4, 0, 0)
DECODER_DEPTHS = (0, 4, 5, 6, 7)


def upsample_like(src: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3×3 convolution (dilated), BatchNorm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1: nn.Module = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block RSU-L (L = depth): a small U-Net whose output is added to its input conv.

    Encoder convs rebnconv1..rebnconv{L-1} with 2×2 max-pooling between them, a dilated bottom conv
    rebnconv{L}, and decoder convs rebnconv{L-1}d..rebnconv1d on concatenated skip connections.
    """

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depth = depth
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        for i in range(1, depth):
            setattr(self, f"rebnconv{i}", REBNCONV(out_ch if i == 1 else mid_ch, mid_ch))
        setattr(self, f"rebnconv{depth}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(depth - 1, 0, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(mid_ch * 2, out_ch if i == 1 else mid_ch))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        # Plain name lists, not ModuleLists: a second registration would duplicate state-dict keys.
        self._encoder = [f"rebnconv{i}" for i in range(1, depth + 1)]
        self._decoder = [f"rebnconv{i}d" for i in range(depth - 1, 0, -1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips: list[torch.Tensor] = []
        hx = hxin
        last = len(self._encoder) - 1
        for i, name in enumerate(self._encoder):
            # Pool before every encoder conv but the first and the dilated bottom one.
            hx = getattr(self, name)(self.pool(hx) if 0 < i < last else hx)
            skips.append(hx)
        hx = skips.pop()
        for i, name in enumerate(self._decoder):
            skip = skips.pop()
            # The bottom conv keeps its input's resolution; every later level is upsampled.
            hx = getattr(self, name)(torch.cat((upsample_like(hx, skip) if i > 0 else hx, skip), 1))
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4F: RSU-4 with dilations 1, 2, 4, 8 instead of pooling; resolution stays fixed."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


def _block(depth: int, in_ch: int, mid_ch: int, out_ch: int) -> nn.Module:
    return RSU4F(in_ch, mid_ch, out_ch) if depth == 0 else RSU(depth, in_ch, mid_ch, out_ch)


class U2Net(nn.Module):
    """The nested U-Net: six encoder stages, five decoder stages, six side outputs fused into d0.

    `forward` returns the seven sigmoid maps (d0, d1..d6) like the authors' model; `U2NetD0`
    wraps it to return d0 alone, which is what serving needs.
    """

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant
        for i, (depth, chans) in enumerate(zip(ENCODER_DEPTHS, variant.encoder, strict=True), start=1):
            setattr(self, f"stage{i}", _block(depth, *chans))
        for i, (depth, chans) in zip(range(5, 0, -1), zip(DECODER_DEPTHS, variant.decoder, strict=True), strict=True):
            setattr(self, f"stage{i}d", _block(depth, *chans))
        for i, ch in enumerate(variant.side_channels, start=1):
            setattr(self, f"side{i}", nn.Conv2d(ch, 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        skips: list[torch.Tensor] = []
        hx = x
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(self.pool(hx) if i > 1 else hx)
            skips.append(hx)
        features = [skips.pop()]  # stage6 output, then stage5d .. stage1d outputs
        hx = features[0]
        for i in range(5, 0, -1):
            skip = skips.pop()
            hx = getattr(self, f"stage{i}d")(torch.cat((upsample_like(hx, skip), skip), 1))
            features.append(hx)
        # side1 reads stage1d (the last decoder output), side6 reads stage6.
        sides: list[torch.Tensor] = []
        for i, feat in enumerate(reversed(features), start=1):
            d = getattr(self, f"side{i}")(feat)
            sides.append(d if not sides else upsample_like(d, sides[0]))
        d0 = self.outconv(torch.cat(sides, 1))
        return (torch.sigmoid(d0), *(torch.sigmoid(d) for d in sides))


class U2NetD0(nn.Module):
    """Serving head: the fused map d0 only, (N, 1, S, S) in 0..1."""

    def __init__(self, net: U2Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def build(name: str) -> U2Net:
    """A U²-Net of the named variant ("u2net" or "u2netp"), freshly initialised."""
    if name not in VARIANTS:
        raise ValueError(f"unknown U²-Net variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return U2Net(VARIANTS[name])


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every REBNCONV's BatchNorm into its convolution (eval semantics), in place.

    The fused model has no BatchNorm left; its outputs equal the eval-mode original's up to
    float rounding.
    """
    for module in model.modules():
        if isinstance(module, REBNCONV) and isinstance(module.bn_s1, nn.BatchNorm2d):
            module.conv_s1 = torch.nn.utils.fusion.fuse_conv_bn_eval(module.conv_s1.eval(), module.bn_s1.eval())
            module.bn_s1 = nn.Identity()
    return model


def conv_execution_order(model: U2Net, size: int = 64) -> list[str]:
    """Qualified names of the model's Conv2d modules in the order a forward pass runs them."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, _i, _o: order.append(names[m])) for m in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return order
