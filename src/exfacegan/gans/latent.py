"""From a single w per image to the per-layer ws a synthesis network consumes."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from exfacegan.errors import ConfigError, DataError
from exfacegan.precision import autocast, autocast_dtype

Center = Literal["w_avg", "zero"]
TruncationStage = Literal["render", "sample"]


@dataclass(frozen=True)
class Truncation:
    """Truncation trick applied to ws[:, :cutoff].

    `center="w_avg"` pulls toward the generator's running mean of w (the official
    StyleGAN behaviour, our default). `center="zero"` pulls toward the zero vector, as the
    ExFaceGAN paper code does (a quirk kept for faithful reproduction).

    `at` says where it applies, as the paper code does per backbone. `render` (its StyleGAN path):
    the stored, labelled, fitted and moved w is the raw mapping output, and every rendering
    truncates. `sample` (its GAN-Control path): w is truncated once when it is sampled; that w is
    stored, fitted and moved, and renderings use codes as they are, so edits reach the synthesis at
    full size. `sample` needs `cutoff=None` (one w for every layer).
    """

    psi: float = 1.0
    cutoff: int | None = None
    center: Center = "w_avg"
    at: TruncationStage = "render"

    def __post_init__(self) -> None:
        for key, allowed in (("center", Center), ("at", TruncationStage)):
            if getattr(self, key) not in typing.get_args(allowed):
                raise ConfigError(f"gan.truncation.{key} must be one of {', '.join(typing.get_args(allowed))}, "
                                  f"got {getattr(self, key)!r}")
        if self.at == "sample" and self.cutoff is not None:
            raise ConfigError("gan.truncation.at=sample truncates the one stored w, so gan.truncation.cutoff must be "
                              f"null, got {self.cutoff}")

    def sampled(self, generator: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """The w the pipeline stores for the mapped `w` [N, w_dim]: truncated here only when `at="sample"`."""
        return ws_from_w(generator, w, self)[:, 0] if self.at == "sample" else w


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


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Synthesis output in about [-1, 1] to uint8, as the official scripts convert it."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@torch.inference_mode()
def synthesize(
    generator: nn.Module,
    w: torch.Tensor,
    *,
    truncation: Truncation = Truncation(),
    noise_mode: str = "const",
    seeds: torch.Tensor | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Images [N, 3, H, W] in about [-1, 1] from single latents w [N, w_dim].

    `seeds` (one per image) feed the optional `generator.prepare_ws` hook, through which a
    backbone such as GAN-Control draws the non-identity attributes of each image; with
    `seeds=None` the hook is not called and every image keeps the attributes of its w.
    With `truncation.at="sample"` the codes were truncated when sampled and are rendered as they are.
    """
    ws = ws_from_w(generator, w, truncation if truncation.at == "render" else Truncation())
    prepare_ws = getattr(generator, "prepare_ws", None)
    if prepare_ws is not None and seeds is not None:
        ws = prepare_ws(ws, seeds)  # seeds stay on the host: attributes are drawn with NumPy, only they go to the device
    with autocast(autocast_dtype(precision, ws.device), ws.device):
        images = generator.synthesis(ws, noise_mode=noise_mode)
    return images.float()


@torch.inference_mode()
def map_z(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The untruncated w [N, w_dim] of each z (unconditional generators get c = 0)."""
    if z.ndim != 2 or z.shape[1] != generator.z_dim:
        raise DataError(f"z has shape {tuple(z.shape)}, the generator expects [N, {generator.z_dim}]")
    c = torch.zeros(z.shape[0], generator.c_dim, device=z.device)
    return generator.mapping(z, c, truncation_psi=1)[:, 0]
