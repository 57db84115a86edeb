"""Building blocks shared by the StyleGAN generators, in plain PyTorch (no compiled extension).

- `FullyConnectedLayer`: linear layer with equalised learning rate (weights scaled at run time).
- `normalize_2nd_moment`: scale each row to unit mean square.
- `modulated_conv2d`: StyleGAN2 modulated convolution with optional demodulation, optional 2x
  up-sampling through a FIR filter, computed either with the styles folded into per-sample
  weights (one grouped convolution) or as input/output scaling around one shared convolution.
- `setup_filter`, `upsample2d`, `fir_filter2d`: the [1,3,3,1] (or any) FIR resampling filter.
- `bias_act`: bias + activation + gain + clamp, in place where allowed.

The FIR conventions follow NVIDIA's `upfirdn2d`: a filter is stored as the normalised 2-D
outer product; up-sampling inserts zeros, pads and convolves with gain up**2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.errors import ConfigError

LRELU_SLOPE = 0.2
# Default gain of each activation (keeps the signal's second moment).
ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2)}


def check_activation(activation: str) -> str:
    if activation not in ACTIVATION_GAINS:
        raise ConfigError(f"unsupported activation {activation!r}; use one of {sorted(ACTIVATION_GAINS)}")
    return activation


def inplace_ok(*tensors: torch.Tensor | None) -> bool:
    """Whether in-place updates are safe: no autograd graph is being recorded through them."""
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """x + bias (over dim 1), activation, times gain (default: the activation's own gain),
    clamped to [-clamp, clamp]. With `inplace=True` x is overwritten (x must not need grad)."""
    gain = ACTIVATION_GAINS[check_activation(activation)] if gain is None else gain
    if bias is not None:
        b = bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
        x = x.add_(b) if inplace else x + b
    if activation == "lrelu":
        x = F.leaky_relu_(x, LRELU_SLOPE) if inplace else F.leaky_relu(x, LRELU_SLOPE)
    elif activation == "relu":
        x = F.relu_(x) if inplace else F.relu(x)
    if gain != 1:
        x = x.mul_(gain) if inplace else x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate: y = act(x @ (W * lr/sqrt(fan_in)).T + b * lr).

    Parameters are stored divided by `lr_multiplier` (as in the official code), so that the
    effective weights have unit-variance initialisation at any learning-rate multiplier.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float | Sequence[float] = 0.0,
        weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = check_activation(activation)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        if bias:
            init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features]) / np.float32(lr_multiplier)
            self.bias = nn.Parameter(torch.from_numpy(init.astype(np.float32)))
        else:
            self.bias = None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.weight_gain
        bias = None
        if self.bias is not None:
            bias = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                bias = bias * self.bias_gain
        if self.activation == "linear" and bias is not None:
            return torch.addmm(bias.unsqueeze(0), x, weight.t())
        x = x.matmul(weight.t())
        return bias_act(x, bias, activation=self.activation, inplace=inplace_ok(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


# ----------------------------------------------------------------------------------------------
# FIR filters


def is_separable(f: torch.Tensor) -> bool:
    """Whether a 2-D unit-sum filter equals the outer product of its column and row sums."""
    f = f.detach().to("cpu", torch.float64)
    return bool(torch.allclose(torch.outer(f.sum(dim=1), f.sum(dim=0)), f, rtol=1e-5, atol=1e-7))


def setup_filter(taps: Sequence[float] | torch.Tensor = (1, 3, 3, 1)) -> torch.Tensor:
    """A 1-D tap list becomes its 2-D outer product; the result is normalised to unit sum."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim == 1:
        f = torch.outer(f, f)
    if f.ndim != 2:
        raise ConfigError(f"a resampling filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    return f / f.sum()


def fir_filter2d(
    x: torch.Tensor,
    f: torch.Tensor,
    padding: Sequence[int],
    gain: float = 1.0,
    bias: torch.Tensor | None = None,
    separable: bool = True,
) -> torch.Tensor:
    """Pad x by (x0, x1, y0, y1) (negative values crop) and convolve every channel with the
    2-D filter f (a true convolution, i.e. f flipped, as `upfirdn2d` with flip_filter=False),
    times gain, plus an optional per-channel bias.

    `separable=True` (valid for filters made by `setup_filter` from 1-D taps, i.e. outer
    products of unit sum) runs two 1-D depthwise passes, whose taps are f's column and row
    sums (no host synchronisation), which is about twice as fast as one 2-D pass.
    """
    channels = x.shape[1]
    x0, x1, y0, y1 = padding
    conv_pad = [0, 0]
    if x0 == x1 >= 0 and y0 == y1 >= 0:
        conv_pad = [y0, x0]  # symmetric: let the convolution pad (no extra copy)
    else:
        x = F.pad(x, [x0, x1, y0, y1])
    bias = None if bias is None else bias.to(x.dtype)
    if not separable:
        weight = (f.flip([0, 1]) * gain).to(x.dtype)[None, None].repeat(channels, 1, 1, 1)
        return F.conv2d(x, weight, bias=bias, padding=conv_pad, groups=channels)
    fx = (f.sum(dim=0).flip(0) * gain).to(x.dtype)
    fy = f.sum(dim=1).flip(0).to(x.dtype)
    # (Weights materialised: expanded, stride-0 weights make oneDNN drop channels-last.)
    x = F.conv2d(x, fx.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), padding=(0, conv_pad[1]), groups=channels)
    fy_weight = fy.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    return F.conv2d(x, fy_weight, bias=bias, padding=(conv_pad[0], 0), groups=channels)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x (or up-x) FIR up-sampling, as `upfirdn2d.upsample2d(x, f, up)`: zeros inserted after
    each sample, padded by ((fw + up - 1) // 2, (fw - up) // 2), filtered with gain up**2.

    Done as one depthwise transposed convolution: no multiplications by inserted zeros.
    """
    channels = x.shape[1]
    fh, fw = f.shape
    # Zero insertion + low padding p0 + convolution == transposed convolution whose padding
    # is taps - 1 - p0, with the filter flipped twice (once by each convention).
    pad_y = fh - 1 - (fh + up - 1) // 2
    pad_x = fw - 1 - (fw + up - 1) // 2
    height, width = x.shape[2] * up, x.shape[3] * up
    if pad_y >= 0 and pad_x >= 0 and fh % 2 == 0 and fw % 2 == 0 and up == 2:
        weight = (f * (up * up)).to(x.dtype)[None, None].repeat(channels, 1, 1, 1)
        return F.conv_transpose2d(x, weight, stride=up, padding=(pad_y, pad_x), groups=channels)
    # Any other filter/factor: explicit zero insertion, then the filter.
    zeros = x.new_zeros(x.shape[0], channels, height, width)
    zeros[:, :, ::up, ::up] = x
    pads = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return fir_filter2d(zeros, f, pads, gain=up * up)


# ----------------------------------------------------------------------------------------------
# Modulated convolution


def weight_sq_sums(weight: torch.Tensor) -> torch.Tensor:
    """sum over the kernel window of weight**2: [O, I], for the demodulation coefficients."""
    return weight.to(torch.float32).square().sum(dim=[2, 3])


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    fused: bool | None = None,
    out_scale: float = 1.0,
    bias: torch.Tensor | None = None,
    separable_filter: bool = True,
    weight_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated (and demodulated) convolution of x [N, I, H, W] with weight [O, I, k, k] and
    styles [N, I]; `up=2` up-samples as the official `conv2d_resample` does (transposed
    stride-2 convolution, then the FIR filter with gain 4), `padding` is the conv padding.

    `fused=True` folds styles and demodulation into per-sample weights and runs one grouped
    convolution (cheapest for small batches); `fused=False` scales the activations before
    and after one shared convolution (cheapest for large batches); None picks by batch size.
    The result is multiplied by `out_scale` and, if given, `bias` (already scaled) is added.
    `weight_sq` may pass a cached `weight_sq_sums(weight)`.
    `separable_filter` says whether the resample filter is an outer product (see `fir_filter2d`).
    With batch 1 the fused form is a plain convolution and keeps x's memory format
    (channels-last is much faster on CPUs).
    """
    batch, in_channels = x.shape[0], x.shape[1]
    out_channels, _, kh, kw = weight.shape
    if styles.shape != (batch, in_channels):
        raise ValueError(f"styles shape {tuple(styles.shape)} does not match x {tuple(x.shape)}")
    dtype = x.dtype
    styles = styles.to(torch.float32)
    if dtype != torch.float32 and demodulate:
        # Official fp16 pre-normalisation; cancelled exactly by the demodulation below.
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    weight = weight.to(torch.float32)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (W[o,i,k] * s[n,i])^2 == (s^2 @ (sum_k W^2).T)[n, o]
        wsq = weight_sq_sums(weight) if weight_sq is None else weight_sq
        dcoefs = (styles.square() @ wsq.t() + 1e-8).rsqrt()
    if fused is None:
        # Per-sample weights pay off where they are smaller than the activations they spare.
        fused = batch == 1 and weight.numel() <= x.numel()

    if fused:
        # w[n, o, i] = W[o, i] * s[n, i] * d[n, o] * out_scale, as one product.
        scale_out = dcoefs * out_scale if dcoefs is not None else torch.full((batch, out_channels), out_scale, device=x.device)
        coefs = scale_out.unsqueeze(2) * styles.unsqueeze(1)  # [N, O, I]
        w = (weight.unsqueeze(0) * coefs.reshape(batch, out_channels, in_channels, 1, 1)).to(dtype)
        group_bias = None
        if bias is not None:
            group_bias = bias.to(dtype).repeat(batch)
        xg = x if batch == 1 else x.reshape(1, batch * in_channels, *x.shape[2:])
        if up == 1:
            w = w.reshape(batch * out_channels, in_channels, kh, kw)
            if xg.is_contiguous(memory_format=torch.channels_last):
                # oneDNN sometimes returns NCHW for NHWC input unless the weight is NHWC too.
                w = w.contiguous(memory_format=torch.channels_last)
            out = F.conv2d(xg, w, bias=group_bias, padding=padding, groups=batch)
            return out.reshape(batch, out_channels, *out.shape[2:])
        # Transposed convolution wants [groups * I, O, k, k].
        wt = w.transpose(1, 2).reshape(batch * in_channels, out_channels, kh, kw)
        out = _upsample_conv(xg, wt, batch, padding, up, resample_filter, bias=group_bias, separable=separable_filter)
        return out.reshape(batch, out_channels, *out.shape[2:])

    memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    x = x * styles.to(dtype).reshape(batch, in_channels, 1, 1)
    if up == 1:
        out = F.conv2d(x, weight.to(dtype).contiguous(memory_format=memory_format), padding=padding)
    else:
        wt = weight.to(dtype).transpose(0, 1)
        out = _upsample_conv(x, wt, 1, padding, up, resample_filter, separable=separable_filter)
    scale = dcoefs * out_scale if dcoefs is not None else torch.full((batch, out_channels), out_scale, device=x.device)
    scale = scale.to(dtype).reshape(batch, out_channels, 1, 1)
    if bias is None:
        return out.mul_(scale) if inplace_ok(out, scale) else out * scale
    return torch.addcmul(bias.to(dtype).reshape(1, -1, 1, 1), out, scale)


def _upsample_conv(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    groups: int,
    padding: int,
    up: int,
    f: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    separable: bool = True,
) -> torch.Tensor:
    """conv2d_resample with up > 1: a stride-`up` transposed convolution (weight_t laid out as
    [groups * I, O, k, k], not flipped), then the FIR filter with gain up**2, padded so that
    the output is exactly up times the input size (for the usual padding = k // 2)."""
    if f is None:
        raise ValueError("up-sampling needs a resample filter")
    kh, kw = weight_t.shape[2:]
    fh, fw = f.shape
    # Padding of the up-sampled image (official arithmetic), minus what the transposed conv adds.
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, weight_t, stride=up, padding=(pyt, pxt), groups=groups)
    return fir_filter2d(x, f, (px0 + pxt, px1 - pxt, py0 + pyt, py1 - pyt), gain=up * up, bias=bias, separable=separable)
