"""IResNet embedders: checkpoint loading (ArcFace / ElasticFace / CurricularFace `.pth`) and inference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.embedders.iresnet import STAGE_CHANNELS, IResNet, iresnet
from exfacegan.errors import CheckpointError
from exfacegan.imaging import to_unit_range
from exfacegan.precision import autocast, autocast_dtype, check_precision

INPUT_SIZE = 112
# Containers some training scripts wrap the backbone's state dict in.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "backbone", "model")


class IResNetEmbedder(nn.Module):
    """112x112 RGB faces (uint8, or floats in [-1, 1]) -> L2-normalised float32 embeddings [N, D].

    Other sizes are resized to 112. `precision` fp16/bf16 runs under autocast on CUDA (fp32 on CPU).
    """

    def __init__(self, network: IResNet, precision: str = "fp32") -> None:
        super().__init__()
        check_precision(precision)
        self.network = network.eval().requires_grad_(False)
        self.precision = precision
        self.embedding_dim = network.num_features

    def train(self, mode: bool = True) -> IResNetEmbedder:
        # An embedder is never trained: its BatchNorm statistics must stay frozen.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.network.parameters()).device
        with torch.inference_mode(), autocast(autocast_dtype(self.precision, device), device):
            features = self.network(to_unit_range(images.to(device), INPUT_SIZE))
            embeddings = F.normalize(features.float(), dim=1)
        return embeddings.clone()  # a normal tensor: callers may edit it in place


def _short_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def read_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` backbone checkpoint, unwrapped and without a `module.` prefix."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"embedder checkpoint {path} does not exist; set embedder.checkpoint=/path/to/backbone.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or refused files
        raise CheckpointError(f"cannot read embedder checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path} holds no state dict (found {type(state).__name__}); expected an iresnet backbone .pth")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_iresnet_state(network: IResNet, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `network`, or raise one CheckpointError line naming every mismatch."""
    expected = network.state_dict()
    # BatchNorm step counters are not used at inference; old checkpoints may lack them.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches (checkpoint vs model): {_short_list(wrong_shape)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit IResNet(layers={list(network.layers)}, widths={list(network.widths)}, "
            f"num_features={network.num_features}): "
            + "; ".join(problems) + " - check the architecture (embedder.network.arch) and the checkpoint"
        )
    network.load_state_dict({**expected, **state}, strict=True)


def load_iresnet_embedder(
    arch: str | Sequence[int],
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    num_features: int | None = None,
    widths: Sequence[int] = STAGE_CHANNELS,
) -> IResNetEmbedder:
    """An IResNetEmbedder (iresnet18/34/50/100/200, or block counts per stage; stage `widths`) with
    weights from a `.pth` (a backbone state dict, or the `backbone.pt` that training writes).

    num_features defaults to the checkpoint's embedding size (512 for the public models).
    """
    state = read_state_dict(checkpoint)
    if num_features is None:
        num_features = int(state["features.weight"].shape[0]) if "features.weight" in state else 512
    network = iresnet(arch, num_features, widths=widths)
    load_iresnet_state(network, state, source=f"checkpoint {checkpoint}")
    return IResNetEmbedder(network, precision).to(device)


def random_iresnet_embedder(
    arch: str | Sequence[int] = (1, 1, 1, 1),
    num_features: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> IResNetEmbedder:
    """An iresnet with random weights from `seed` (not a face model): for smoke runs and tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = iresnet(arch, num_features)
    return IResNetEmbedder(network, precision).to(device)


__all__ = [
    "INPUT_SIZE", "IResNetEmbedder", "load_iresnet_embedder", "load_iresnet_state",
    "random_iresnet_embedder", "read_state_dict",
]
