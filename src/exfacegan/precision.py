"""Numeric precision settings (`precision: fp32 | fp16 | bf16 [| auto]`): one table, one check, one autocast.

Reduced precision applies on CUDA only; elsewhere everything computes in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from exfacegan.errors import ConfigError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO = "auto"  # bf16 where the GPU supports it, else fp16 (with loss scaling when training)


def check_precision(precision: str, allow_auto: bool = False) -> str:
    """`precision` itself, or one ConfigError line naming the allowed values."""
    allowed = [*PRECISIONS, AUTO] if allow_auto else list(PRECISIONS)
    if precision not in allowed:
        raise ConfigError(f"precision must be one of {', '.join(allowed)}, got {precision!r}")
    return precision


def autocast_dtype(precision: str, device: torch.device | str, allow_auto: bool = False) -> torch.dtype | None:
    """The dtype to autocast to on `device`, or None for float32 (fp32, and any device but CUDA)."""
    check_precision(precision, allow_auto)
    if torch.device(device).type != "cuda" or precision == "fp32":
        return None
    if precision == AUTO:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None, device: torch.device | str) -> Iterator[None]:
    """`torch.autocast` to `dtype` on `device`'s type; a no-op for None (float32)."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        yield
