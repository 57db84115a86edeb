"""What the StyleGAN2 and StyleGAN3 modules share: the mapping network (identical in both official code
bases but for its default depth), the generator wrapper (mapping, then synthesis) built from an official
pickle's `init_kwargs`, and the synthesis networks' `precision` option."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from exfacegan.errors import ConfigError, DataError
from exfacegan.gans.ops.fc import FullyConnectedLayer, normalize_2nd_moment
from exfacegan.precision import check_precision

NOISE_MODES = ("const", "random", "none")
# The official MappingNetwork options both versions accept (some are training-only there).
MAPPING_OPTIONS = frozenset({"num_layers", "lr_multiplier", "w_avg_beta", "freeze_layers", "freeze_embed"})


class MappingNetwork(nn.Module):
    """z (and the embedded label c) -> w, broadcast to num_ws, with the truncation trick."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
        freeze_layers: int = 0,
        freeze_embed: bool = False,
    ) -> None:
        super().__init__()
        del freeze_layers, freeze_embed  # training-only options of the official code
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                got = None if z is None else tuple(z.shape)
                raise DataError(f"z has shape {got}, the generator expects [N, {self.z_dim}]")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim or (z is not None and c.shape[0] != z.shape[0]):
                got = None if c is None else tuple(c.shape)
                raise DataError(f"c has shape {got}, this conditional generator expects [N, {self.c_dim}]")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ConfigError("this mapping network tracks no w_avg (w_avg_beta=None): truncation is impossible")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


def check_synthesis_input(ws: torch.Tensor, noise_mode: str, num_ws: int, w_dim: int) -> None:
    """One DataError line unless ws is [N, num_ws, w_dim] and noise_mode is one of NOISE_MODES."""
    if noise_mode not in NOISE_MODES:
        raise DataError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    if ws.ndim != 3 or ws.shape[1:] != (num_ws, w_dim):
        raise DataError(f"ws has shape {tuple(ws.shape)}, the generator expects [N, {num_ws}, {w_dim}]")


class PrecisionOption:
    """`precision` ("fp32", "fp16", "bf16"): the dtype of the layers the official code runs in fp16; checked when set."""

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)


class StyleGenerator(nn.Module):
    """z (and c) -> mapping -> ws -> synthesis -> images; subclasses name their two networks."""

    name: ClassVar[str]
    synthesis_class: ClassVar[type[nn.Module]]
    mapping_class: ClassVar[type[nn.Module]]
    mapping_options: ClassVar[frozenset[str]] = MAPPING_OPTIONS

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        synthesis_kwargs: dict[str, Any] | None = None,
        **more_synthesis_kwargs: Any,
    ) -> None:
        # StyleGAN2-ADA pickles nest synthesis_kwargs; the StyleGAN3 code base passes them flat.
        synthesis_kwargs = {**dict(synthesis_kwargs or {}), **more_synthesis_kwargs}
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = self.synthesis_class(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        mapping_kwargs = dict(mapping_kwargs or {})
        unknown = sorted(set(mapping_kwargs) - self.mapping_options)
        if unknown:
            raise ConfigError(f"unknown {self.name} mapping options {unknown}; allowed: {sorted(self.mapping_options)}")
        self.mapping = self.mapping_class(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        update_emas: bool = False,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, update_emas=update_emas, **synthesis_kwargs)
