"""IResNet face-recognition backbones, state-dict compatible with insightface's arcface_torch.

Layout (as arcface_torch's `backbones/iresnet.py`): a stem `conv1, bn1, prelu`, four stages
`layer1..4` of pre-activation blocks (64/128/256/512 channels, each stage halves the resolution),
and a head `bn2 -> flatten -> dropout -> fc -> features (BatchNorm1d)`. A 112x112 input leaves 7x7
maps before the head. Checkpoints of ArcFace, ElasticFace and CurricularFace load unchanged.
`widths` narrows the stages (e.g. 16/32/64/128 for CPU smoke training) without changing the layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from exfacegan.errors import ConfigError

BN_EPS = 1e-5
STAGE_CHANNELS = (64, 128, 256, 512)
FEATURE_MAP_SIZE = 7  # 112 / 2**4

ARCHITECTURES: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """bn1 -> conv1 -> bn2 -> prelu -> conv2 (strided) -> bn3, plus the (down-sampled) input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """arcface_torch's IResNet with IBasicBlock; `forward` returns the raw (unnormalised) features.

    `fp16=True` runs the convolutional trunk under CUDA autocast and the head in float32, as the
    original does for mixed-precision training. `widths` are the channels of the four stages
    (arcface_torch: 64, 128, 256, 512).
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_features: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        zero_init_residual: bool = False,
        widths: Sequence[int] = STAGE_CHANNELS,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigError(f"IResNet needs four positive block counts, got layers={list(layers)}")
        if len(widths) != 4 or any(int(n) < 1 for n in widths):
            raise ConfigError(f"IResNet needs four positive stage widths, got widths={list(widths)}")
        self.layers = tuple(int(n) for n in layers)
        self.widths = tuple(int(n) for n in widths)
        self.num_features = int(num_features)
        self.fp16 = bool(fp16)
        self.conv1 = _conv3x3(3, self.widths[0])
        self.bn1 = nn.BatchNorm2d(self.widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(self.widths[0])
        in_channels = self.widths[0]
        for index, (channels, blocks) in enumerate(zip(self.widths, self.layers), start=1):
            stage = [IBasicBlock(in_channels, channels, stride=2)]
            stage += [IBasicBlock(channels, channels) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            in_channels = channels
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(in_channels * FEATURE_MAP_SIZE**2, self.num_features)
        self.features = nn.BatchNorm1d(self.num_features, eps=BN_EPS)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False  # arcface_torch freezes the embedding BN scale
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", enabled=self.fp16 and x.is_cuda):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


def iresnet(arch: str | Sequence[int], num_features: int = 512, **kwargs) -> IResNet:
    """Build an IResNet by name: iresnet18/34/50/100/200 (also accepted: r50, "50"), or from its four
    block counts per stage; `kwargs` (`widths`, `dropout`, ...) go to `IResNet`."""
    if not isinstance(arch, (str, int)):
        return IResNet(list(arch), num_features=num_features, **kwargs)
    key = str(arch).lower()
    key = key if key.startswith("iresnet") else "iresnet" + key.lstrip("r")
    if key not in ARCHITECTURES:
        raise ConfigError(f"unknown iresnet architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return IResNet(ARCHITECTURES[key], num_features=num_features, **kwargs)


def iresnet18(num_features: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet18", num_features, **kwargs)


def iresnet34(num_features: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet34", num_features, **kwargs)


def iresnet50(num_features: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet50", num_features, **kwargs)


def iresnet100(num_features: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet100", num_features, **kwargs)


def iresnet200(num_features: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet200", num_features, **kwargs)
