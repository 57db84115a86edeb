"""FIR resampling with NVIDIA's `upfirdn2d` conventions, in plain PyTorch.

A filter is stored as the normalised 2-D outer product of its taps (`setup_filter`); filtering is
a true convolution (the filter flipped, `flip_filter=False`); up-sampling inserts `up - 1` zeros
after each sample, pads and filters with gain up**2 (`upsample2d`), done as one depthwise
transposed convolution, so nothing is multiplied by the inserted zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from exfacegan.errors import ConfigError


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


def _depthwise(kernel: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    # Materialised: expanded, stride-0 weights make oneDNN drop channels-last.
    return kernel.to(dtype)[None, None].repeat(channels, 1, 1, 1)


def crop_or_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Remove (positive) or add zero (negative) rows/columns at each border."""
    if min(top, bottom, left, right) < 0:
        return F.pad(x, [-left, -right, -top, -bottom])
    return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]


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
        return F.conv2d(x, _depthwise(f.flip([0, 1]) * gain, channels, x.dtype), bias=bias, padding=conv_pad, groups=channels)
    fx = f.sum(dim=0).flip(0) * gain
    fy = f.sum(dim=1).flip(0)
    x = F.conv2d(x, _depthwise(fx[None], channels, x.dtype), padding=(0, conv_pad[1]), groups=channels)
    return F.conv2d(x, _depthwise(fy[:, None], channels, x.dtype), bias=bias, padding=(conv_pad[0], 0), groups=channels)


def _bf16_on_cpu(x: torch.Tensor) -> bool:
    """Whether a convolution of x would run in bf16 on the CPU (x is bf16, or CPU autocast to bf16 is on)."""
    if x.device.type != "cpu":
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == torch.bfloat16 or autocast_bf16


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, padding: Sequence[int] | None = None) -> torch.Tensor:
    """`upfirdn2d(x, f, up=up, padding=padding, gain=up**2)` for a 2-D filter f: zeros inserted
    after each sample, padded by (x0, x1, y0, y1) (default: ((fw + up - 1) // 2, (fw - up) // 2)
    per axis, which keeps the size exactly `up` times larger), filtered.

    Zero insertion + padding + convolution is one depthwise transposed convolution; the part of
    the crop that is equal at both ends becomes its padding, the rest an explicit crop or pad.
    """
    if _bf16_on_cpu(x):
        # oneDNN runs no bf16 depthwise *transposed* convolution: PyTorch's fallback is 2-6x slower than fp32.
        with torch.autocast("cpu", enabled=False):
            return upsample2d(x.float(), f, up, padding).to(x.dtype)
    fh, fw = f.shape
    if padding is None:
        padding = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    x0, x1, y0, y1 = (int(p) for p in padding)
    # The transposed convolution gives o[n] = sum_k f[k] z[n - k] over the zero-inserted z; the
    # wanted output is o[n + taps - 1 - pad_lo]: crop `start` at the front, `tail` at the back.
    crops = []
    for size, taps, pad_lo, pad_hi in ((x.shape[2], fh, y0, y1), (x.shape[3], fw, x0, x1)):
        start = taps - 1 - pad_lo
        full = (size - 1) * up + taps
        wanted = size * up + pad_lo + pad_hi - taps + 1
        crops.append((start, full - start - wanted))
    sym = [max(0, min(start, tail)) for start, tail in crops]
    weight = _depthwise(f * (up * up), x.shape[1], x.dtype)
    x = F.conv_transpose2d(x, weight, stride=up, padding=tuple(sym), groups=x.shape[1])
    (top, bottom), (left, right) = crops
    return crop_or_pad(x, top - sym[0], bottom - sym[0], left - sym[1], right - sym[1])
