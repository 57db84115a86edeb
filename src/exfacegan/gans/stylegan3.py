"""StyleGAN3 generator (configs T and R) in plain PyTorch.

Computes what NVIDIA's `training.networks_stylegan3.Generator` computes, with the same
constructor arguments (a pickle's `init_kwargs`) and the same `state_dict()` keys, but runs
its filtered leaky ReLU through `exfacegan.gans.ops.filtered_lrelu` (polyphase, channels-last, in place)
and its modulated convolutions as one ordinary convolution per layer (styles applied to the
activations, demodulation to the output), which is what makes it fast on a CPU.

`precision` ("fp32", "fp16", "bf16") selects the dtype of the layers that the official code
runs in fp16 (the `num_fp16_res` highest resolutions); reduced precision applies on CUDA only,
as in the official code, and the CPU always computes in fp32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.errors import ConfigError
from exfacegan.gans.ops.fc import FullyConnectedLayer
from exfacegan.gans.ops.filtered_lrelu import design_lowpass_filter, filtered_lrelu
from exfacegan.gans.stylegan_common import MappingNetwork as CommonMapping
from exfacegan.gans.stylegan_common import PrecisionOption, StyleGenerator, check_synthesis_input
from exfacegan.precision import autocast_dtype



class MappingNetwork(CommonMapping):
    """StyleGAN3's mapping network: the StyleGAN2 one (same keys and arithmetic), two layers by default."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2, **kwargs: Any) -> None:
        super().__init__(z_dim, c_dim, w_dim, num_ws, num_layers=num_layers, **kwargs)


class SynthesisInput(nn.Module):
    """Fourier features on a grid, rotated/translated by an affine of w and by `transform`."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = np.broadcast_to(np.asarray(size), [2])
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        self._width, self._height = (int(v) for v in self.size)  # Python ints: torch.compile traces them as constants
        # Frequencies uniform on a disc of radius `bandwidth`, random phases.
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3))  # user-set inverse transform of the image
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        batch = w.shape[0]
        t = self.affine(w)  # (cos, sin, tx, ty) up to scale
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        rotation = torch.eye(3, device=w.device).repeat(batch, 1, 1)
        rotation[:, 0, 0], rotation[:, 0, 1] = t[:, 0], -t[:, 1]
        rotation[:, 1, 0], rotation[:, 1, 1] = t[:, 1], t[:, 0]
        translation = torch.eye(3, device=w.device).repeat(batch, 1, 1)
        translation[:, 0, 2], translation[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = rotation @ translation @ self.transform.unsqueeze(0)

        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # Fade out frequencies that the user transform pushed out of band.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self._width / self.sampling_rate
        theta[1, 1] = 0.5 * self._height / self.sampling_rate
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, self._height, self._width], align_corners=False)
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * np.pi))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / float(np.sqrt(self.channels))).t()
        return x.permute(0, 3, 1, 2)  # NCHW view of channels-last memory


class SynthesisLayer(nn.Module):
    """Modulated convolution followed by the filtered leaky ReLU (or the ToRGB layer)."""

    def __init__(
        self,
        w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
        in_channels: int, out_channels: int,
        in_size: int, out_size: int,                    # spatial sizes, margins included
        in_sampling_rate: int, out_sampling_rate: int,
        in_cutoff: float, out_cutoff: float,            # filter cutoffs (Hz, at the sampling rates above)
        in_half_width: float, out_half_width: float,    # transition band half-widths
        conv_kernel: int = 3,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
    ) -> None:
        super().__init__()
        self.is_torgb, self.use_fp16 = is_torgb, use_fp16
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = in_size, out_size
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta
        tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(tmp_sampling_rate / in_sampling_rate))
        self.down_factor = int(np.rint(tmp_sampling_rate / out_sampling_rate))
        if in_sampling_rate * self.up_factor != tmp_sampling_rate or out_sampling_rate * self.down_factor != tmp_sampling_rate:
            raise ConfigError("StyleGAN3 sampling rates must differ by integer factors; check lrelu_upsampling")
        up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.register_buffer(
            "up_filter", design_lowpass_filter(up_taps, in_cutoff, in_half_width * 2, tmp_sampling_rate)
        )
        radial = use_radial_filters and not is_critically_sampled
        self.register_buffer(
            "down_filter", design_lowpass_filter(down_taps, out_cutoff, out_half_width * 2, tmp_sampling_rate, radial)
        )
        # Padding that yields out_size samples, centred as in the paper's Appendix C.3.
        pad_total = (out_size - 1) * self.down_factor + 1
        pad_total -= (in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += up_taps + down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = (int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi))

    def forward(self, x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype = torch.float32, update_emas: bool = False) -> torch.Tensor:
        if update_emas:
            magnitude = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        styles = self.affine(w)
        weight = self.weight
        if self.is_torgb:
            styles = styles * float(1 / np.sqrt(self.in_channels * self.conv_kernel**2))
        else:
            # Pre-normalisation as in the official code (the style scale spans the whole batch).
            weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean().rsqrt()
        # conv(x, w * s * d * g) == d * conv(x * s * g, w): styles scale the input channels,
        # demodulation coefficients the output channels; one batched convolution remains.
        in_scale = styles * self.magnitude_ema.rsqrt()
        x = x.to(dtype) * in_scale.to(dtype).unsqueeze(2).unsqueeze(3)
        x = F.conv2d(x, weight.to(dtype), padding=self.conv_kernel - 1)
        bias = self.bias.to(dtype).view(1, -1, 1, 1)
        if not self.is_torgb:
            demod = (styles.square() @ weight.square().sum([2, 3]).t() + 1e-8).rsqrt()
            demod = demod.to(dtype).unsqueeze(2).unsqueeze(3)
            x = x * demod if x.requires_grad and torch.is_grad_enabled() else x.mul_(demod)
        x = x + bias if x.requires_grad and torch.is_grad_enabled() else x.add_(bias)
        return filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1 if self.is_torgb else float(np.sqrt(2)),
            slope=1 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )


class SynthesisNetwork(PrecisionOption, nn.Module):
    def __init__(
        self,
        w_dim: int, img_resolution: int, img_channels: int,
        channel_base: int = 32768, channel_max: int = 512,
        num_layers: int = 14,                   # layers between the input and the ToRGB layer
        num_critical: int = 2,
        first_cutoff: float = 2,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin_size: int = 10,
        output_scale: float = 0.25,
        num_fp16_res: int = 4,
        precision: str = "fp32",
        channels_last: bool = True,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        allowed = {"conv_kernel", "filter_size", "lrelu_upsampling", "use_radial_filters", "conv_clamp", "magnitude_ema_beta"}
        unknown = sorted(set(layer_kwargs) - allowed)
        if unknown:
            raise ConfigError(f"unknown StyleGAN3 synthesis options {unknown}; allowed extra options: {sorted(allowed)}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_ws = num_layers + 2
        self.num_layers, self.num_fp16_res = num_layers, num_fp16_res
        self.output_scale = output_scale
        self.precision = precision
        self.channels_last = channels_last

        # Geometric progression of cutoffs and minimum stopbands up to the critically sampled layers.
        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(w_dim, int(channels[0]), int(sizes[0]), sampling_rates[0], cutoffs[0])
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim,
                is_torgb=idx == num_layers,
                is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=bool(sampling_rates[idx] * (2**num_fp16_res) > img_resolution),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]),
                out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev],
                out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev],
                out_half_width=half_widths[idx],
                **layer_kwargs,
            )
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = False, update_emas: bool = False) -> torch.Tensor:
        check_synthesis_input(ws, noise_mode, self.num_ws, self.w_dim)
        reduced = None if force_fp32 else autocast_dtype(self.precision, ws.device)
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=memory_format)
        for name, w in zip(self.layer_names, ws[1:]):
            layer = getattr(self, name)
            dtype = reduced if (reduced is not None and layer.use_fp16) else torch.float32
            x = layer(x, w, dtype=dtype, update_emas=update_emas).contiguous(memory_format=memory_format)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32).contiguous()


class Generator(StyleGenerator):
    """StyleGAN3 generator; arguments are the official `init_kwargs` plus `precision` and
    `channels_last` (speed options that leave the result unchanged in fp32)."""

    name = "StyleGAN3"
    synthesis_class = SynthesisNetwork
    mapping_class = MappingNetwork
