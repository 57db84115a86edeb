"""Bias, activation, gain and clamp in one call, as NVIDIA's `bias_act` (reference path)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
    inplace: bool = False,
    slope: float = LRELU_SLOPE,
) -> torch.Tensor:
    """x + bias (over dim 1), activation (`slope` for lrelu), times gain (default: the activation's
    own gain), clamped to [-clamp, clamp]. With `inplace=True` x is overwritten (x must not need grad)."""
    gain = ACTIVATION_GAINS[check_activation(activation)] if gain is None else gain
    if bias is not None:
        b = bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
        x = x.add_(b) if inplace else x + b
    if activation == "lrelu":
        x = F.leaky_relu_(x, slope) if inplace else F.leaky_relu(x, slope)
    elif activation == "relu":
        x = F.relu_(x) if inplace else F.relu(x)
    if gain != 1:
        x = x.mul_(gain) if inplace else x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
    return x
