"""The equalised-learning-rate linear layer of StyleGAN2, StyleGAN3 and GAN-Control (rosinality's EqualLinear)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from exfacegan.gans.ops.bias_act import bias_act, check_activation, inplace_ok


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


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
        self.weight_gain = float(lr_multiplier / np.sqrt(in_features))  # a Python float: torch.compile traces it as a constant
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
