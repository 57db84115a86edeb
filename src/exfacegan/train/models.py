"""Backbones for training: the iresnets of `exfacegan.embedders`, plus a narrow one for CPU smoke runs."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from exfacegan.embedders.iresnet import BN_EPS, FEATURE_MAP_SIZE, IBasicBlock
from exfacegan.errors import ConfigError


class SmallIResNet(nn.Module):
    """The iresnet layout (stem, four stride-2 stages of IBasicBlocks, BN-FC-BN head) with chosen stage widths.

    `widths=(64, 128, 256, 512)` is `IResNet` itself; narrow widths make a network that trains on a
    laptop CPU in seconds per epoch. Input 112x112, output raw `num_features` embeddings.
    """

    def __init__(self, layers: Sequence[int] = (1, 1, 1, 1), widths: Sequence[int] = (16, 32, 64, 128),
                 num_features: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise ConfigError(f"SmallIResNet needs four positive layers and widths, got {list(layers)}, {list(widths)}")
        self.num_features = int(num_features)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        stages, in_channels = [], widths[0]
        for channels, blocks in zip(widths, layers):
            stages += [IBasicBlock(in_channels, channels, stride=2)]
            stages += [IBasicBlock(channels, channels) for _ in range(blocks - 1)]
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * FEATURE_MAP_SIZE**2, self.num_features)
        self.features = nn.BatchNorm1d(self.num_features, eps=BN_EPS)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False  # as IResNet: the embedding BN has no learnt scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.prelu(self.bn1(self.conv1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))
