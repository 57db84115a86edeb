"""MTCNN's three networks (P-, R-, O-Net) and where their weights come from.

Module names equal the keys of facenet-pytorch 2.6.0's `data/{pnet,rnet,onet}.pt` state dicts
(TensorFlow-converted MTCNN weights, MIT), so those files load as they are. The dense layers of
R- and O-Net read the last feature map in (N, W, H, C) order, the order those weights were
converted in. Pooling rounds up (ceil mode), activations are per-channel PReLU.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from torch import nn

from exfacegan.errors import CheckpointError

WEIGHT_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}
GET_WEIGHTS = "pip install --no-deps facenet-pytorch==2.6.0"


def _conv_stack(widths: list[int], kernels: list[int], pools: list[int | None]) -> list[tuple[str, nn.Module]]:
    """conv{i} -> prelu{i} [-> pool{i}] for each layer, named as the weight files name them."""
    layers, channels = [], 3
    for index, (width, kernel, pool) in enumerate(zip(widths, kernels, pools), start=1):
        layers += [(f"conv{index}", nn.Conv2d(channels, width, kernel)), (f"prelu{index}", nn.PReLU(width))]
        if pool is not None:
            layers.append((f"pool{index}", nn.MaxPool2d(pool, 2, ceil_mode=True)))
        channels = width
    return layers


class PNet(nn.Module):
    """Proposal net, fully convolutional: image -> (box offsets [N, 4, h, w], face probability [N, h, w])."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _conv_stack([10, 16, 32], [3, 3, 3], [2, None, None]):
            self.add_module(name, layer)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "conv3", "prelu3"):
            x = self._modules[name](x)
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


class _DenseHead(nn.Module):
    """Convolutions, then dense layers on the (N, W, H, C)-ordered features."""

    convs: tuple[str, ...]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.convs:
            x = self._modules[name](x)
        return x.permute(0, 3, 2, 1).flatten(1)


class RNet(_DenseHead):
    """Refinement net: 24x24 crops -> (box offsets [N, 4], face probability [N])."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _conv_stack([28, 48, 64], [3, 3, 2], [3, 3, None]):
            self.add_module(name, layer)
        self.convs = tuple(self._modules)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu4(self.dense4(self.features(x)))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(_DenseHead):
    """Output net: 48x48 crops -> (box offsets [N, 4], landmarks [N, 10] = 5 x then 5 y, face probability [N])."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _conv_stack([32, 64, 64, 128], [3, 3, 3, 2], [3, 3, 2, None]):
            self.add_module(name, layer)
        self.convs = tuple(self._modules)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.prelu5(self.dense5(self.features(x)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


def mtcnn_weights_dir(weights: str | Path | None = None) -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt: `weights` if given, else the installed
    facenet-pytorch distribution's data folder (found from its metadata; the package is never imported),
    else the three files fetched once from the facenet-pytorch wheel through the weights registry."""
    if weights is not None:
        folder = Path(weights).expanduser()
        where = str(folder)
    else:
        try:
            folder = Path(importlib.metadata.distribution("facenet-pytorch").locate_file("facenet_pytorch/data"))
        except importlib.metadata.PackageNotFoundError:
            from exfacegan.weights import fetch

            folders = {fetch(f"mtcnn-{name}").parent for name in WEIGHT_FILES}
            if len(folders) != 1:
                raise CheckpointError(f"MTCNN weights were fetched into several folders: {sorted(folders)}") from None
            folder = folders.pop()
        where = f"{folder}"
    missing = [name for name in WEIGHT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"MTCNN weights {', '.join(missing)} missing in {where}; {GET_WEIGHTS}, "
                              "or set align.weights to a folder with pnet.pt, rnet.pt and onet.pt")
    return folder


def load_mtcnn_nets(weights: str | Path | None = None) -> nn.ModuleDict:
    """P-, R- and O-Net with the facenet-pytorch weights, in eval mode."""
    folder = mtcnn_weights_dir(weights)
    nets = nn.ModuleDict({"pnet": PNet(), "rnet": RNet(), "onet": ONet()})
    for name, filename in WEIGHT_FILES.items():
        try:
            state = torch.load(folder / filename, map_location="cpu", weights_only=True)
            nets[name].load_state_dict(state)
        except Exception as error:  # unpickling refusals, wrong keys or shapes: all one line
            raise CheckpointError(f"cannot load MTCNN weights {folder / filename}: {str(error).splitlines()[0]}") from None
    return nets.eval().requires_grad_(False)
