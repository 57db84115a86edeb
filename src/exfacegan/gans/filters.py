"""Alias-free resampling for StyleGAN3: low-pass filter design and the filtered leaky ReLU.

The filtered leaky ReLU upsamples, applies bias/leaky ReLU/gain/clamp at the higher rate and
downsamples again. Done naively (insert zeros, then a large convolution) it dominates the
cost of StyleGAN3 synthesis. Here the upsampling is one strided transposed convolution (the
polyphase form: no multiplications by inserted zeros), its cropping is folded into the
transposed convolution's padding, the activation runs in place, gain is folded into the
downsampling filter, and the downsampling is one strided depthwise convolution, all of which
oneDNN runs fastest in channels-last layout. Large intermediates are processed in channel
chunks to bound peak memory.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F

# Upper bound on the upsampled intermediate of one filtered_lrelu call; above it the channels
# are processed in chunks (the op is depthwise, so chunks are independent).
TMP_BUDGET_BYTES = 2**30
# "conv" (2-D depthwise convolutions) or "gemm" (separable passes as matrix products).
DEFAULT_METHOD = "conv"


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


def _crop_or_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Remove (positive) or add zero (negative) rows/columns at each border."""
    if min(top, bottom, left, right) < 0:
        return F.pad(x, [-left, -right, -top, -bottom])
    return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]


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
    channels = x.shape[1]
    pad_x0, pad_x1, pad_y0, pad_y1 = padding
    taps_y, taps_x = up_kernel.shape
    # Upsampling as a transposed convolution o[n] = sum_k f[k] z[n - k] (z = zero-inserted x);
    # the wanted upfirdn output is o[n + taps - 1 - pad_lo]: crop `start` at the front, `tail`
    # at the back. The symmetric part of the crop is the transposed convolution's padding.
    crops = []
    for size, taps, pad_lo, pad_hi in ((x.shape[2], taps_y, pad_y0, pad_y1), (x.shape[3], taps_x, pad_x0, pad_x1)):
        start = taps - 1 - pad_lo
        full = (size - 1) * up + taps
        wanted = size * up + pad_lo + pad_hi - taps + 1
        crops.append((start, full - start - wanted))
    sym = [max(0, min(start, tail)) for start, tail in crops]
    weight = up_kernel[None, None].expand(channels, 1, taps_y, taps_x)
    tmp = F.conv_transpose2d(x, weight, stride=up, padding=tuple(sym), groups=channels)
    tmp = _crop_or_pad(
        tmp, crops[0][0] - sym[0], crops[0][1] - sym[0], crops[1][0] - sym[1], crops[1][1] - sym[1]
    )
    if slope != 1:
        F.leaky_relu_(tmp, slope)
    if clamp is not None:
        tmp.clamp_(-clamp, clamp)
    weight = down_kernel[None, None].expand(channels, 1, *down_kernel.shape)
    return F.conv2d(tmp, weight, stride=down, groups=channels)


def _band_matrix(taps: torch.Tensor, up: int, down: int, pad_lo: int, out_start: int, rows: int, in_start: int, cols: int) -> torch.Tensor:
    """Rows [out_start, +rows) and columns [in_start, +cols) of the matrix of a 1-D upfirdn:
    out[j] = sum_i in[i] * taps[down * j + len(taps) - 1 - pad_lo - up * i]."""
    num_taps = taps.numel()
    out_idx = torch.arange(out_start, out_start + rows, device=taps.device).view(-1, 1)
    in_idx = torch.arange(in_start, in_start + cols, device=taps.device).view(1, -1)
    tap = down * out_idx + num_taps - 1 - pad_lo - up * in_idx
    valid = (tap >= 0) & (tap < num_taps)
    return torch.where(valid, taps[tap.clamp(0, num_taps - 1)], torch.zeros((), dtype=taps.dtype, device=taps.device))


def _upfirdn_rows(x: torch.Tensor, taps: torch.Tensor, up: int, down: int, pad_lo: int, out_len: int) -> torch.Tensor:
    """1-D upfirdn along dim 0 of a contiguous [L, n] tensor, as matrix products.

    The banded resampling matrix is the same for every block of `tile` outputs, so all full
    blocks are one batched GEMM over overlapping windows of the input (a strided view, no
    copy); the few outputs at the borders, whose windows leave the input, use their own rows.
    """
    length, width = x.shape
    num_taps = taps.numel()
    tile = 16 if up > 1 else 8
    step = down * tile // up
    first_in = -(pad_lo // up)  # first input of the window of output 0
    window = (down * (tile - 1) + num_taps - 1 - pad_lo) // up - first_in + 1
    out = x.new_empty(out_len, width)
    q_first = max(0, -(first_in // step) if first_in < 0 else 0)
    q_end = min(out_len // tile, (length - window - first_in) // step + 1)

    def rows_directly(j_start: int, j_end: int) -> None:
        if j_end <= j_start:
            return
        i_start = max(0, -((pad_lo - down * j_start) // up))
        i_end = min(length, (down * (j_end - 1) + num_taps - 1 - pad_lo) // up + 1)
        if i_end <= i_start:
            out[j_start:j_end].zero_()
            return
        matrix = _band_matrix(taps, up, down, pad_lo, j_start, j_end - j_start, i_start, i_end - i_start)
        torch.mm(matrix, x[i_start:i_end], out=out[j_start:j_end])

    if q_end <= q_first:
        rows_directly(0, out_len)
        return out
    count = q_end - q_first
    matrix = _band_matrix(taps, up, down, pad_lo, 0, tile, first_in, window)
    windows = x.as_strided((count, window, width), (step * width, width, 1), (first_in + q_first * step) * width)
    torch.bmm(matrix.expand(count, tile, window), windows, out=out[q_first * tile : q_end * tile].view(count, tile, width))
    rows_directly(0, q_first * tile)
    rows_directly(q_end * tile, out_len)
    return out


def _filtered_lrelu_gemm(
    x: torch.Tensor,
    up_taps: torch.Tensor,
    down_filter: torch.Tensor,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    gain: float,
    slope: float,
    clamp: float | None,
) -> torch.Tensor:
    """The filtered leaky ReLU with a separable upsampling filter, on an [H, W, N, C] layout
    in which each 1-D pass filters the leading axis of a matrix (rows: one spatial axis,
    columns: everything else) and so is a matrix product."""
    batch, channels, height, width = x.shape
    pad_x0, pad_x1, pad_y0, pad_y1 = padding
    num_up = up_taps.numel()
    tmp_h = height * up + pad_y0 + pad_y1 - num_up + 1
    tmp_w = width * up + pad_x0 + pad_x1 - num_up + 1
    up_taps = up_taps * up  # upfirdn2d's gain up**2, split over the two passes
    rows = x.permute(2, 3, 0, 1).contiguous()  # [H, W, N, C]
    rows = _upfirdn_rows(rows.view(height, -1), up_taps, up, 1, pad_y0, tmp_h)
    cols = rows.view(tmp_h, width, -1).transpose(0, 1).contiguous()  # [W, H', N*C]
    del rows
    tmp = _upfirdn_rows(cols.view(width, -1), up_taps, up, 1, pad_x0, tmp_w)  # [W', H', N*C]
    del cols
    if slope != 1:
        F.leaky_relu_(tmp, slope)
    if clamp is not None:
        tmp.clamp_(-clamp / gain, clamp / gain)
    if down_filter.ndim == 2:
        # Radial filter: one depthwise strided convolution; [W', H', N*C] is the channels-last
        # memory of a [1, N*C, W', H'] image (transposed, so the kernel is transposed too).
        image = tmp.view(tmp_w, tmp_h, batch * channels).permute(2, 0, 1).unsqueeze(0)
        kernel = (down_filter.flip([0, 1]) * gain).t()
        kernel = kernel[None, None].expand(batch * channels, 1, *kernel.shape)
        out = F.conv2d(image, kernel, stride=down, groups=batch * channels)  # [1, N*C, W'', H'']
        return out[0].view(batch, channels, *out.shape[2:]).transpose(2, 3)
    num_down = down_filter.numel()
    out_w = (tmp_w - num_down) // down + 1
    out_h = (tmp_h - num_down) // down + 1
    cols = _upfirdn_rows(tmp.view(tmp_w, -1), down_filter, 1, down, 0, out_w)  # [W'', H', N*C]
    del tmp
    rows = cols.view(out_w, tmp_h, -1).transpose(0, 1).contiguous()  # [H', W'', N*C]
    del cols
    out = _upfirdn_rows(rows.view(tmp_h, -1), down_filter * gain, 1, down, 0, out_h)  # [H'', W'', N*C]
    return out.view(out_h, out_w, batch, channels).permute(2, 3, 0, 1)


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
    method: str | None = None,
) -> torch.Tensor:
    """bias -> upsample (filter `up_filter`, factor `up`, padding [x0, x1, y0, y1]) ->
    leaky ReLU (`slope`) -> * `gain` -> clamp to [-clamp, clamp] -> downsample (`down_filter`,
    factor `down`), equal to StyleGAN3's `filtered_lrelu`. Filters are 1-D (separable) or 2-D;
    None is the identity. `x` is [N, C, H, W]; channels-last input is fastest on the CPU.
    """
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, 1, 1)
    if up == 1 and down == 1 and up_filter is None and down_filter is None and not any(padding):
        # The ToRGB case: a pointwise activation only.
        x = F.leaky_relu(x, slope) if slope != 1 else x
        x = x * gain if gain != 1 else x
        return x.clamp(-clamp, clamp) if clamp is not None else x
    method = DEFAULT_METHOD if method is None else method
    # The matrix-product path writes into preallocated outputs, which autograd cannot follow.
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if method == "gemm" and not needs_grad and up_filter is not None and up_filter.ndim == 1 and down_filter is not None:
        args = (up_filter.to(x.dtype), down_filter.to(x.dtype), up, down, tuple(int(p) for p in padding), gain, slope, clamp)
        run = _filtered_lrelu_gemm
    else:
        up_kernel = _as_2d(up_filter, x.dtype, x.device) * (up**2)
        # Flipped because upfirdn2d convolves (not correlates); gain moves behind the clamp.
        down_kernel = _as_2d(down_filter, x.dtype, x.device).flip([0, 1]) * gain
        # The upsampling kernel stays unflipped: a transposed convolution already convolves.
        args = (up_kernel, down_kernel, up, down, tuple(int(p) for p in padding), slope, None if clamp is None else clamp / gain)
        run = _filtered_lrelu_chunk
    if tmp_budget_bytes is None:
        tmp_budget_bytes = TMP_BUDGET_BYTES
    batch, channels, height, width = x.shape
    tmp_bytes = batch * channels * (height * up + padding[2] + padding[3]) * (width * up + padding[0] + padding[1])
    tmp_bytes *= x.element_size()
    memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if tmp_bytes <= tmp_budget_bytes or channels == 1:
        return run(x, *args).contiguous(memory_format=memory_format)
    chunk = max(1, int(channels * tmp_budget_bytes // tmp_bytes))
    first = run(x[:, :chunk], *args)
    out = torch.empty((batch, channels, *first.shape[2:]), dtype=x.dtype, device=x.device, memory_format=memory_format)
    out[:, :chunk] = first
    del first
    for start in range(chunk, channels, chunk):
        out[:, start : start + chunk] = run(x[:, start : start + chunk], *args)
    return out
