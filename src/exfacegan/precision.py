"""Numeric precision settings (`precision: fp32 | fp16 | bf16 [| auto]`): one table, one check, one autocast.

Reduced precision applies where `REDUCED_ON` says: fp16 and bf16 on CUDA, bf16 on a CPU with native bf16
instructions (AVX-512 BF16 or AMX, as oneDNN reports it). Elsewhere everything computes in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from exfacegan.errors import ConfigError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO = "auto"  # bf16 where the GPU supports it, else fp16 (with loss scaling when training)
# The reduced precisions each device type computes in; a CPU without native bf16 emulates it, slower than fp32.
REDUCED_ON: dict[str, tuple[str, ...]] = {"cuda": ("fp16", "bf16"), "cpu": ("bf16",)}


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions and matmuls natively on this CPU (AVX-512 BF16 or AMX)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str, allow_auto: bool = False) -> str:
    """`precision` itself, or one ConfigError line naming the allowed values."""
    allowed = [*PRECISIONS, AUTO] if allow_auto else list(PRECISIONS)
    if precision not in allowed:
        raise ConfigError(f"precision must be one of {', '.join(allowed)}, got {precision!r}")
    return precision


def autocast_dtype(precision: str, device: torch.device | str, allow_auto: bool = False) -> torch.dtype | None:
    """The dtype to autocast to on `device`, or None for float32: fp32; `auto` anywhere but CUDA; a precision
    that `REDUCED_ON` does not list for the device type; bf16 on a CPU without native bf16."""
    check_precision(precision, allow_auto)
    device_type = torch.device(device).type
    if precision == AUTO:
        if device_type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in REDUCED_ON.get(device_type, ()):
        return None
    if device_type == "cpu" and not cpu_has_native_bf16():
        return None
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None, device: torch.device | str) -> Iterator[None]:
    """`torch.autocast` to `dtype` on `device`'s type; a no-op for None (float32)."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        yield
