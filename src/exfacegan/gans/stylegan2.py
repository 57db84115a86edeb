"""StyleGAN2 generator in plain PyTorch (configs E/F, the 'skip' generator of StyleGAN2-ADA).

Computes what NVIDIA's `networks_stylegan2.Generator` (StyleGAN3 code base; the same network
as StyleGAN2-ADA-PyTorch's `networks.Generator`) computes. The constructor takes the official
`init_kwargs` (both the `synthesis_kwargs={...}` form of StyleGAN2-ADA and the flat form of
the StyleGAN3 code base), and `state_dict()` keys equal the official ones, so the weights of
an official pickle load directly.

Speed: each modulated convolution is one convolution with per-sample weights (styles and
demodulation folded in, grouped over the batch) or, for larger batches, one shared
convolution between input and output scaling; activation gain is folded into the weights,
the bias into the convolution, the activation and clamp run in place. The FIR up-sampling is
a depthwise (transposed) convolution. `precision` ("fp32", "fp16", "bf16") is the dtype of
the blocks the official code runs in fp16 (the `num_fp16_res` highest resolutions); reduced
precision applies on CUDA only, as in the official code; the CPU always computes in fp32.
`channels_last` (default True) keeps activations in NHWC layout, 2-3x faster on CPUs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.errors import ConfigError
from exfacegan.gans.modulated_conv import modulated_conv2d, weight_sq_sums
from exfacegan.gans.ops.bias_act import ACTIVATION_GAINS, LRELU_SLOPE, check_activation, inplace_ok
from exfacegan.gans.ops.fc import FullyConnectedLayer
from exfacegan.gans.ops.upfirdn2d import is_separable, setup_filter, upsample2d
from exfacegan.gans.stylegan_common import (
    MAPPING_OPTIONS,
    MappingNetwork,
    PrecisionOption,
    StyleGenerator,
    check_synthesis_input,
)
from exfacegan.precision import autocast_dtype



def _refresh_filter_kind(module: nn.Module, incompatible_keys: Any) -> None:
    module.fir_separable = is_separable(module.resample_filter)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x up-sampling), noise, bias, lrelu, clamp."""

    def __init__(
        self,
        in_channels: int, out_channels: int, w_dim: int, resolution: int,  # sizes
        kernel_size: int = 3,
        up: int = 1,                                # 2: 2x up-sampling before the convolution
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Any = (1, 3, 3, 1),        # FIR taps of the up-sampling
        conv_clamp: float | None = None,            # clamp activations to +-this (None: no clamp)
        channels_last: bool = False,                # recorded by official pickles; the layout is chosen at run time
    ) -> None:
        super().__init__()
        del channels_last  # memory layout is chosen at run time
        self.in_channels, self.out_channels = in_channels, out_channels
        self.w_dim, self.resolution, self.up = w_dim, resolution, up
        self.use_noise = use_noise
        self.activation = check_activation(activation)
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATION_GAINS[activation]
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.fir_separable = is_separable(self.resample_filter)
        # A checkpoint may bring its own filter: re-check (once, at load time).
        self.register_load_state_dict_post_hook(_refresh_filter_kind)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def _weight_sq(self) -> torch.Tensor | None:
        """weight_sq_sums(weight), cached while the weight is unchanged (inference only)."""
        weight = self.weight
        if (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
            return None  # compiled: computed in the graph, where a data_ptr key would break it
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        cache = getattr(self, "_weight_sq_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, weight_sq_sums(weight.detach()))
            self._weight_sq_cache = cache
        return cache[1]

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool | None = None, gain: float = 1
    ) -> torch.Tensor:
        styles = self.affine(w)
        # act(z) * g == act(g * z) for g > 0: the gain is folded into weights, bias and noise.
        act_gain = self.act_gain * gain
        x = modulated_conv2d(
            x, self.weight, styles, demodulate=True, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, fused=fused_modconv, out_scale=act_gain,
            bias=self.bias * act_gain, separable_filter=self.fir_separable, weight_sq=self._weight_sq(),
        )
        inplace = inplace_ok(x)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            else:
                noise = self.noise_const
            noise = (noise * (self.noise_strength * act_gain)).to(x.dtype)
            x = x.add_(noise) if inplace and not noise.requires_grad else x + noise
        if self.activation == "lrelu":
            x = F.leaky_relu_(x, LRELU_SLOPE) if inplace else F.leaky_relu(x, LRELU_SLOPE)
        elif self.activation == "relu":
            x = x.relu_() if inplace else x.relu()
        if self.conv_clamp is not None:
            limit = self.conv_clamp * gain
            x = x.clamp_(-limit, limit) if inplace else x.clamp(-limit, limit)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        del channels_last
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = float(1 / np.sqrt(in_channels * kernel_size**2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool | None = None) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        if self.weight.shape[2:] == (1, 1) and x.is_contiguous(memory_format=torch.channels_last):
            # 1x1 convolution of NHWC data == one batched matrix product [HW, I] @ [I, O].
            batch, channels, height, width = x.shape
            weight = self.weight[:, :, 0, 0].t().unsqueeze(0) * styles.unsqueeze(2)  # [N, I, O]
            pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
            bias = self.bias.to(x.dtype).view(1, 1, -1)
            x = torch.baddbmm(bias, pixels, weight.to(x.dtype))
            x = x.view(batch, height, width, -1).permute(0, 3, 1, 2)
        else:
            x = modulated_conv2d(x, self.weight, styles, demodulate=False, padding=self.padding, fused=fused_modconv, bias=self.bias)
        if self.conv_clamp is not None:
            x = x.clamp_(-self.conv_clamp, self.conv_clamp) if inplace_ok(x) else x.clamp(-self.conv_clamp, self.conv_clamp)
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(nn.Module):
    """One resolution: [const | 2x up-sampling conv0], conv1, ToRGB added to the up-sampled image."""

    def __init__(
        self,
        in_channels: int, out_channels: int, w_dim: int, resolution: int,  # sizes (in_channels 0: the first block)
        img_channels: int, is_last: bool,
        architecture: str = "skip",
        resample_filter: Any = (1, 3, 3, 1),
        conv_clamp: float | None = 256,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        fused_modconv_default: Any = True,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        del fp16_channels_last, fused_modconv_default  # run-time choices here
        if architecture not in ("skip", "orig"):
            raise ConfigError(f"StyleGAN2 architecture {architecture!r} is not supported; use 'skip' (or 'orig')")
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture = img_channels, is_last, architecture
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs,
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, **layer_kwargs
        )
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        noise_mode: str = "const",
        fused_modconv: bool | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = x.contiguous(memory_format=memory_format)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
            if img is None:
                img = y
            else:
                img = img.add_(y) if inplace_ok(img, y) else img + y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


_BLOCK_OPTIONS = {
    "architecture", "resample_filter", "conv_clamp", "fp16_channels_last", "fused_modconv_default",
    "kernel_size", "use_noise", "activation",
}


class SynthesisNetwork(PrecisionOption, nn.Module):
    def __init__(
        self,
        w_dim: int, img_resolution: int, img_channels: int,
        channel_base: int = 32768, channel_max: int = 512,  # channels at resolution r: min(channel_base / r, channel_max)
        num_fp16_res: int = 4,                    # the official code's fp16 blocks: the highest resolutions
        precision: str = "fp32",                  # fp16 | bf16: those blocks at reduced precision on CUDA
        fused_modconv: bool | None = None,        # None: chosen by cost per call
        channels_last: bool = True,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(block_kwargs) - _BLOCK_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown StyleGAN2 synthesis options {unknown}; allowed: {sorted(_BLOCK_OPTIONS)}")
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ConfigError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.num_fp16_res = num_fp16_res
        self.precision = precision
        self.fused_modconv = fused_modconv
        self.channels_last = channels_last
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                img_channels=img_channels, is_last=res == img_resolution, use_fp16=res >= fp16_resolution,
                **block_kwargs,
            )
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "const",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        del update_emas  # no running statistics in StyleGAN2 synthesis
        check_synthesis_input(ws, noise_mode, self.num_ws, self.w_dim)
        fused_modconv = self.fused_modconv if fused_modconv is None else fused_modconv
        reduced = None if force_fp32 else autocast_dtype(self.precision, ws.device)
        ws = ws.to(torch.float32)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            dtype = reduced if (reduced is not None and block.use_fp16) else torch.float32
            x, img = block(x, img, block_ws, dtype=dtype, noise_mode=noise_mode, fused_modconv=fused_modconv, memory_format=memory_format)
        return img.contiguous()

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}"
        )


class Generator(StyleGenerator):
    """StyleGAN2 generator; arguments are an official pickle's `init_kwargs`.

    Extra options (not in official pickles): `precision` (see module docstring) and
    `fused_modconv` (True: per-sample weights; False: shared convolution; None: by batch size).
    """

    name = "StyleGAN2"
    synthesis_class = SynthesisNetwork
    mapping_class = MappingNetwork
    mapping_options = MAPPING_OPTIONS | {"embed_features", "layer_features", "activation"}
