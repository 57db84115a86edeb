"""From a single w per image to the per-layer ws a synthesis network consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from exfacegan.errors import DataError


@dataclass(frozen=True)
class Truncation:
    """Truncation trick applied to ws[:, :cutoff].

    `center="w_avg"` pulls toward the generator's running mean of w (the official
    StyleGAN behaviour, our default). `center="zero"` pulls toward the zero vector, as the
    ExFaceGAN paper code does (a quirk kept for faithful reproduction).
    """

    psi: float = 1.0
    cutoff: int | None = None
    center: Literal["w_avg", "zero"] = "w_avg"


def ws_from_w(generator: nn.Module, w: torch.Tensor, truncation: Truncation = Truncation()) -> torch.Tensor:
    """Broadcast w [N, w_dim] to ws [N, num_ws, w_dim] and apply truncation."""
    if w.ndim != 2 or w.shape[1] != generator.w_dim:
        raise DataError(f"latents have shape {tuple(w.shape)}, the generator expects [N, {generator.w_dim}]")
    ws = w.unsqueeze(1).repeat(1, generator.num_ws, 1)
    if truncation.psi != 1:
        cutoff = generator.num_ws if truncation.cutoff is None else truncation.cutoff
        if truncation.center == "w_avg":
            center = generator.mapping.w_avg.to(ws.dtype)
        else:
            center = torch.zeros(generator.w_dim, device=ws.device, dtype=ws.dtype)
        ws[:, :cutoff] = center.lerp(ws[:, :cutoff], truncation.psi)
    return ws
