"""Any ONNX face model as a torch embedder: a small interpreter over the graph's ops (`onnx_ops.OPS`).

The file is read with the `onnx` package; its floating-point weights become buffers (so the module
moves to the pipeline's device), integer constants (shapes) stay on the CPU. Nodes run in the file's
order, any batch size; the declared output batch (often a fixed 1) is not used.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.precision import autocast, autocast_dtype, check_precision
from exfacegan.embedders.onnx_ops import OPS, problem
from exfacegan.imaging import to_unit_range
from exfacegan.errors import CheckpointError, ConfigError

Node = tuple[str, list[str], list[str], dict]


def _accepts(function, attrs: dict) -> bool:
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return True
    return set(attrs) <= {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}


class OnnxGraph(nn.Module):
    """The graph of an ONNX model as a module: one input tensor -> its first output."""

    def __init__(self, graph, source: str = "the ONNX model") -> None:
        from onnx import helper, numpy_helper

        super().__init__()
        values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes: list[Node] = []
        refused = set()
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            if op == "Constant":
                values[node.output[0]] = _constant(attrs)
            elif op not in OPS:
                refused.add(op)
            elif (reason := problem(op, attrs)) or not _accepts(OPS[op], attrs):
                refused.add(reason or f"{op} with attributes {sorted(attrs)}")
            else:
                self.nodes.append((op, list(node.input), list(node.output), attrs))
        if refused:
            raise CheckpointError(
                f"{source} uses ONNX ops exfacegan cannot run: {', '.join(sorted(refused))} "
                f"(supported: {', '.join(sorted([*OPS, 'Constant']))})"
            )
        feeds = [i for i in graph.input if i.name not in values]
        if len(feeds) != 1:
            raise CheckpointError(f"{source} has {len(feeds)} inputs; exfacegan feeds one image batch")
        self.input_name = feeds[0].name
        self.input_dims = _static_dims(feeds[0])
        self.input_type = feeds[0].type.tensor_type.elem_type
        self.output_name = graph.output[0].name
        used = {name for _, inputs, _, _ in self.nodes for name in inputs} | {self.output_name}
        extra = sorted(o for _, _, outputs, _ in self.nodes for o in outputs[1:] if o and o in used)
        if extra:
            raise CheckpointError(f"{source} reads secondary outputs ({', '.join(extra)}) that exfacegan cannot compute")
        self._buffers_of: dict[str, str] = {}
        self._constants: dict[str, torch.Tensor] = {}
        for index, (name, array) in enumerate(values.items()):
            tensor = torch.from_numpy(array.copy())
            if tensor.is_floating_point():
                self.register_buffer(f"w{index}", tensor)
                self._buffers_of[name] = f"w{index}"
            else:
                self._constants[name] = tensor
        last_use = {name: i for i, (_, inputs, _, _) in enumerate(self.nodes) for name in inputs if name}
        self._release = [[n for n, j in last_use.items() if j == i and n not in values and n != self.output_name]
                         for i in range(len(self.nodes))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {name: getattr(self, buffer) for name, buffer in self._buffers_of.items()}
        env.update(self._constants)
        env[self.input_name] = x
        for (op, inputs, outputs, attrs), release in zip(self.nodes, self._release):
            env[outputs[0]] = OPS[op](*[env[n] if n else None for n in inputs], **attrs)
            for name in release:
                del env[name]
        return env[self.output_name]


def _constant(attrs: dict) -> np.ndarray:
    from onnx import numpy_helper

    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise CheckpointError(f"Constant with {sorted(attrs)} is not supported")


def _static_dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


class OnnxEmbedder(nn.Module):
    """RGB faces (uint8, or floats in [-1, 1], any size: resized to the model's) -> L2-normalised float32 [N, D].

    Pixel values p in 0..255 reach the model as (p - mean) / std, per channel when mean/std are triples.
    """

    def __init__(self, graph: OnnxGraph, input_size: tuple[int, int], mean: float | Sequence[float] = 127.5,
                 std: float | Sequence[float] = 127.5, precision: str = "fp32", embedding_dim: int | None = None) -> None:
        super().__init__()
        check_precision(precision)
        self.graph = graph.eval()
        self.input_size = tuple(input_size)
        self.precision = precision
        self.embedding_dim = embedding_dim
        self.register_buffer("mean", channel_values(mean, "mean"))
        self.register_buffer("std", channel_values(std, "std"))

    def train(self, mode: bool = True) -> OnnxEmbedder:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = self.mean.device
        with torch.inference_mode(), autocast(autocast_dtype(self.precision, device), device):
            pixels = to_unit_range(images.to(device), self.input_size) * 127.5 + 127.5
            features = self.graph((pixels - self.mean) / self.std)
            embeddings = F.normalize(features.float().flatten(1), dim=1)
        return embeddings.clone()


def channel_values(value: float | Sequence[float], name: str) -> torch.Tensor:
    """`embedder.mean`/`std` as a [1, C, 1, 1] tensor: one number, or three (RGB); std > 0."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    if not numbers or len(values) not in (1, 3) or (name == "std" and min(values) <= 0):
        raise ConfigError(f"embedder.{name} must be a number or three numbers (RGB){', all > 0' * (name == 'std')}, got {value}")
    return torch.tensor([float(v) for v in values], dtype=torch.float32).reshape(1, -1, 1, 1)


def resolve_model_file(path: str | Path) -> Path:
    """A registry name of an ONNX face model (fetched, verified), or the path of an .onnx file."""
    from exfacegan import weights

    if str(path) in weights.REGISTRY:
        entry = weights.spec(str(path))
        if entry.arch != "onnx":
            raise CheckpointError(f"{path} is a {entry.arch} checkpoint, not an ONNX face model")
        return weights.fetch(str(path))
    file = Path(path).expanduser()
    if not file.is_file():
        names = sorted(n for n, e in weights.REGISTRY.items() if e.arch == "onnx")
        raise CheckpointError(f"ONNX model {file} does not exist; give an .onnx file or one of {', '.join(names)}")
    return file


def load_onnx_embedder(
    path: str | Path,
    device: str | torch.device = "cpu",
    mean: float | Sequence[float] = 127.5,
    std: float | Sequence[float] = 127.5,
    precision: str = "fp32",
) -> OnnxEmbedder:
    """An embedder from an ONNX face model (a file, or a registry name such as arcface_r50_webface600k).

    The model's input must be N x 3 x H x W float32 (H, W fixed); faces are resized to it.
    """
    import onnx

    check_precision(precision)  # the settings are checked before the file is fetched or read
    channel_values(mean, "mean")
    channel_values(std, "std")
    file = resolve_model_file(path)
    try:
        model = onnx.load(str(file))
    except Exception as error:  # protobuf raises several types for a file that is not ONNX
        raise CheckpointError(f"cannot read ONNX model {file}: {type(error).__name__}: {error}".splitlines()[0]) from None
    graph = OnnxGraph(model.graph, source=str(file))
    dims = graph.input_dims
    if len(dims) != 4 or dims[1] != 3 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
        raise CheckpointError(
            f"{file}: input {graph.input_name!r} has shape {dims}; exfacegan feeds N x 3 x H x W images (RGB, fixed H, W)")
    if graph.input_type != onnx.TensorProto.FLOAT:
        raise CheckpointError(f"{file}: input {graph.input_name!r} is not float32; exfacegan feeds float32 images")
    output = _static_dims(model.graph.output[0])
    embedding_dim = output[-1] if output and isinstance(output[-1], int) and output[-1] > 0 else None
    return OnnxEmbedder(graph, (dims[2], dims[3]), mean, std, precision, embedding_dim).to(device)


__all__ = ["OnnxEmbedder", "OnnxGraph", "load_onnx_embedder", "resolve_model_file"]
