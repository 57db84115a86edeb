"""Alias-free resampling for StyleGAN3: low-pass filter design and the filtered leaky ReLU.

The filtered leaky ReLU upsamples, applies bias/leaky ReLU/gain/clamp at the higher rate and
downsamples again. Done naively (insert zeros, then a large convolution) it dominates the
cost of StyleGAN3 synthesis. Here the upsampling is `upfirdn2d.upsample2d` (one strided
transposed convolution, its cropping folded into its padding), the activation is `bias_act`
in place, gain is folded into the downsampling filter, and the
downsampling is one strided depthwise convolution that computes only the kept samples (for the
radial filters of config R as well), all in channels-last layout, where oneDNN's depthwise
kernels are fastest. Separable filters run as their 2-D outer product: on the 2-core CPU this
was written on, that beat 1-D passes (depthwise or as banded matrix products), which are bound
by memory traffic. Large intermediates are processed in channel chunks to bound peak memory.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F

from exfacegan.gans.ops.bias_act import bias_act, inplace_ok
from exfacegan.gans.ops.upfirdn2d import upsample2d
# Upper bound on the upsampled intermediate of one filtered_lrelu call; above it the channels
# are processed in chunks (the op is depthwise, so chunks are independent).
TMP_BUDGET_BYTES = 2**30


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> torch.Tensor | None:
    """Kaiser-windowed low-pass FIR filter, as StyleGAN3 designs it.

    Separable: a 1-D `scipy.signal.firwin` filter [numtaps]. Radial: a 2-D jinc-based filter
    [numtaps, numtaps] windowed by the outer product of a Kaiser window and normalised to unit
    sum. One tap means the identity, returned as None.
    """
    if numtaps < 1:
        raise ValueError(f"numtaps must be at least 1, got {numtaps}")
    if numtaps == 1:
        return None
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(taps, dtype=torch.float32)
    coords = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    radius = np.hypot(*np.meshgrid(coords, coords))
    taps = scipy.special.j1(2 * cutoff * (np.pi * radius)) / (np.pi * radius)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    taps *= np.outer(window, window)
    taps /= np.sum(taps)
    return torch.as_tensor(taps, dtype=torch.float32)


def _as_2d(taps: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if taps is None:
        return torch.ones(1, 1, dtype=dtype, device=device)
    taps = taps.to(device=device, dtype=dtype)
    return torch.outer(taps, taps) if taps.ndim == 1 else taps


def _filtered_lrelu_chunk(
    x: torch.Tensor,
    up_kernel: torch.Tensor,
    down_kernel: torch.Tensor,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    slope: float,
    clamp: float | None,
) -> torch.Tensor:
    tmp = upsample2d(x, up_kernel, up, padding)
    tmp = bias_act(tmp, activation="lrelu", gain=1, clamp=clamp, inplace=inplace_ok(tmp), slope=slope)
    weight = down_kernel[None, None].expand(x.shape[1], 1, *down_kernel.shape)
    return F.conv2d(tmp, weight, stride=down, groups=x.shape[1])


def filtered_lrelu(
    x: torch.Tensor,
    up_filter: torch.Tensor | None,
    down_filter: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = float(np.sqrt(2)),
    slope: float = 0.2,
    clamp: float | None = None,
    tmp_budget_bytes: int | None = None,
) -> torch.Tensor:
    """bias -> upsample (filter `up_filter`, factor `up`, padding [x0, x1, y0, y1]) ->
    leaky ReLU (`slope`) -> * `gain` -> clamp to [-clamp, clamp] -> downsample (`down_filter`,
    factor `down`), equal to StyleGAN3's `filtered_lrelu`. Filters are 1-D (separable) or 2-D;
    None is the identity. `x` is [N, C, H, W]; channels-last input is fastest on the CPU.
    """
    if up == 1 and down == 1 and up_filter is None and down_filter is None and not any(padding):
        # The ToRGB case: a pointwise activation only.
        return bias_act(x, bias, "linear" if slope == 1 else "lrelu", gain=gain, clamp=clamp, slope=slope)
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, 1, 1)
    up_kernel = _as_2d(up_filter, x.dtype, x.device)
    # Flipped because upfirdn2d convolves (not correlates); gain moves behind the clamp.
    down_kernel = _as_2d(down_filter, x.dtype, x.device).flip([0, 1]) * gain
    args = (up_kernel, down_kernel, up, down, tuple(int(p) for p in padding), slope, None if clamp is None else clamp / gain)
    if tmp_budget_bytes is None:
        tmp_budget_bytes = TMP_BUDGET_BYTES
    batch, channels, height, width = x.shape
    tmp_bytes = batch * channels * (height * up + padding[2] + padding[3]) * (width * up + padding[0] + padding[1])
    tmp_bytes *= x.element_size()
    memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if tmp_bytes <= tmp_budget_bytes or channels == 1:
        return _filtered_lrelu_chunk(x, *args).contiguous(memory_format=memory_format)
    chunk = max(1, int(channels * tmp_budget_bytes // tmp_bytes))
    first = _filtered_lrelu_chunk(x[:, :chunk], *args)
    out = torch.empty((batch, channels, *first.shape[2:]), dtype=x.dtype, device=x.device, memory_format=memory_format)
    out[:, :chunk] = first
    del first
    for start in range(chunk, channels, chunk):
        out[:, start : start + chunk] = _filtered_lrelu_chunk(x[:, start : start + chunk], *args)
    return out
