"""`compile: true` for a network: its forward through `torch.compile` (Inductor), eager on any compile failure.

Compilation happens on the first call of each input shape (and dtype, device) in a process; Inductor's
on-disk graph cache (`torch._inductor.config.fx_graph_cache`, in `TORCHINDUCTOR_CACHE_DIR`, by default
`/tmp/torchinductor_<user>`) lets later processes, such as the other jobs of a sweep, skip the slow
code generation. A failure to compile (a missing C++ compiler, an op Inductor cannot lower) prints one
warning line and leaves the module eager for the rest of the process; errors the network itself raises
on bad input (the project's `ExFaceGANError`) pass through unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from exfacegan.errors import ExFaceGANError


class CompiledForward:
    """The compiled `forward` of one module, falling back to its eager `forward` after the first failure."""

    def __init__(self, module: nn.Module, label: str, backend: str | Callable[..., Any] = "inductor") -> None:
        self.label = label
        self.eager = module.forward
        self.compiled = torch.compile(self.eager, backend=backend, dynamic=False)
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except ExFaceGANError:
                raise
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eager
                self.failed = True
                cause = getattr(error, "inner_exception", None) or error.__cause__ or error  # Dynamo wraps it
                reason = (str(cause).strip().splitlines() or [""])[0][:200]
                print(f"exfacegan: warning: {self.label}: torch.compile failed ({type(cause).__name__}: {reason}); "
                      "running eager", file=sys.stderr)
        return self.eager(*args, **kwargs)


def compile_module(module: nn.Module, label: str, backend: str | Callable[..., Any] = "inductor") -> nn.Module:
    """`module` itself with its forward compiled (state dict, parameters and attributes unchanged)."""
    torch._inductor.config.fx_graph_cache = True
    if not isinstance(module.forward, CompiledForward):
        module.forward = CompiledForward(module, label, backend)
    return module


def compile_generator(generator: nn.Module, backend: str | Callable[..., Any] = "inductor") -> nn.Module:
    """`generator` with its synthesis network compiled (mapping is cheap and runs once per latent)."""
    compile_module(generator.synthesis, f"{type(generator).__module__.rsplit('.', 1)[-1]} synthesis", backend)
    return generator


def compile_embedder(embedder: nn.Module, backend: str | Callable[..., Any] = "inductor") -> nn.Module:
    """`embedder` with its trunk compiled: the iresnet (`network`) or ONNX graph (`graph`) it wraps, else itself.
    Pre-processing and normalisation stay eager; they are cheap and vary in input size."""
    trunk = getattr(embedder, "network", None) or getattr(embedder, "graph", None) or embedder
    compile_module(trunk, f"{type(embedder).__name__} trunk", backend)
    return embedder
