"""StyleGAN2's modulated convolution, in plain PyTorch (no compiled extension).

`modulated_conv2d`: modulated convolution with optional demodulation, optional 2x up-sampling
through a FIR filter (`conv2d_resample`'s arithmetic), computed either with the styles folded into
per-sample weights (one grouped convolution) or as input/output scaling around one shared
convolution. The FIR filtering is `exfacegan.gans.ops.upfirdn2d`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from exfacegan.gans.ops.bias_act import inplace_ok
from exfacegan.gans.ops.upfirdn2d import fir_filter2d


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
        weight = weight * (float(1 / np.sqrt(in_channels * kh * kw)) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
        weight_sq = None  # a cached sum belongs to the weight before this scaling
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
