"""Any ONNX face model as a torch embedder: a small interpreter over the graph's ops (`onnx_ops.OPS`).

The file is read with the `onnx` package and checked whole before anything runs: every initializer's dims
against the bytes it holds (before its array is made) and its values finite, every node's op, attributes
(name, type, value), inputs (computed earlier: the file's order must be topological) and outputs, then the
graph runs on the meta device (shapes, no memory) to prove every node runs and the one output is [N, D].
Floating-point weights become buffers (so the module moves to the pipeline's device), integer constants
(shapes) stay on the CPU. Nodes run in the file's order, any batch size; the declared output batch (often
a fixed 1) is not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.precision import autocast, autocast_dtype, check_precision
from exfacegan.embedders.onnx_ops import ATTRIBUTES, INPUTS, OPS, problem
from exfacegan.imaging import to_unit_range
from exfacegan.errors import CheckpointError, ConfigError

Node = tuple[str, list[str], list[str], dict]
# ONNX TensorProto data types an initializer may hold -> (bytes per value, the repeated field of the values)
TENSOR_TYPES = {1: (4, "float_data"), 2: (1, "int32_data"), 3: (1, "int32_data"), 6: (4, "int32_data"),
                7: (8, "int64_data"), 9: (1, "int32_data"), 10: (2, "int32_data"), 11: (8, "double_data")}
ATTRIBUTE_KINDS = {1: "float", 2: "int", 3: "string", 4: "tensor", 5: "graph", 6: "floats", 7: "ints", 8: "strings"}
MAX_VALUES_PER_IMAGE = 2**26  # the largest tensor a node may compute per image (256 MiB as float32)
_SMALL = 2**12  # integer tensors up to this many values are shape data, computed for real in the dry run


def check_tensor(tensor, where: str) -> np.ndarray:
    """The values of an ONNX TensorProto, after its dims are checked against the bytes it holds (so that nothing
    larger than the file is allocated); floating-point values must be finite."""
    from onnx import numpy_helper

    kind = TENSOR_TYPES.get(tensor.data_type)
    if kind is None or tensor.HasField("segment") or tensor.data_location == 1:
        raise CheckpointError(f"{where}: tensor {tensor.name!r} of ONNX type {tensor.data_type} "
                              f"(external or segmented data, strings and 16-bit brain floats are not read)")
    if any(d < 0 for d in tensor.dims):
        raise CheckpointError(f"{where}: tensor {tensor.name!r} has dims {list(tensor.dims)}")
    count = int(np.prod(tensor.dims, dtype=object)) if tensor.dims else 1
    held = len(tensor.raw_data) // kind[0] if tensor.HasField("raw_data") else len(getattr(tensor, kind[1]))
    exact = len(tensor.raw_data) == count * kind[0] if tensor.HasField("raw_data") else held == count
    if not exact:
        raise CheckpointError(f"{where}: tensor {tensor.name!r} has dims {list(tensor.dims)} ({count} values) "
                              f"but holds {held}")
    array = numpy_helper.to_array(tensor)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CheckpointError(f"{where}: tensor {tensor.name!r} holds NaN or infinite values")
    return array


def _check_text(graph, source: str) -> None:
    """Names (ops, values, attributes) must be printable text; protobuf hands out bytes for invalid UTF-8."""
    texts = [text for node in graph.node for text in (node.op_type, node.domain, node.name, *node.input, *node.output,
                                                      *(a.name for a in node.attribute))]
    texts += [value.name for value in (*graph.input, *graph.output, *graph.initializer)]
    bad = next((text for text in texts if not isinstance(text, str) or not text.isprintable()), None)
    if bad is not None:
        raise CheckpointError(f"{source} holds a name that is not printable UTF-8 text: {bad!r}")


def _attributes(node, where: str) -> dict:
    """The attributes of a node as Python values, each one known to its op and of its ONNX type."""
    from onnx import helper

    kinds = ATTRIBUTES.get(node.op_type, {})
    attrs = {}
    for attribute in node.attribute:
        kind = ATTRIBUTE_KINDS.get(attribute.type, "undefined")
        if attribute.name not in kinds or attribute.ref_attr_name:
            raise CheckpointError(f"{where}: attribute {attribute.name} is not supported "
                                  f"(known: {', '.join(sorted(kinds)) or 'none'})")
        if kind != kinds[attribute.name]:
            raise CheckpointError(f"{where}: attribute {attribute.name} must be {kinds[attribute.name]}, got {kind}")
        value = helper.get_attribute_value(attribute)
        attrs[attribute.name] = (value.decode("ascii", "replace") if isinstance(value, bytes)
                                 else list(value) if isinstance(value, Sequence) else value)
    return attrs


class OnnxGraph(nn.Module):
    """The graph of an ONNX model as a module: one input tensor -> its one output, checked whole at load."""

    def __init__(self, graph, source: str = "the ONNX model") -> None:
        super().__init__()
        _check_text(graph, source)
        unknown = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node}
                         - {*OPS, "Constant"})
        if unknown:
            raise CheckpointError(
                f"{source} uses ONNX ops exfacegan cannot run: {', '.join(unknown)} "
                f"(supported: {', '.join(sorted([*OPS, 'Constant']))})"
            )
        if len(graph.sparse_initializer):
            raise CheckpointError(f"{source} holds sparse initializers, which exfacegan does not read")
        values = {t.name: check_tensor(t, f"{source}: initializer") for t in graph.initializer}
        feeds = [i for i in graph.input if i.name not in values]
        if len(feeds) != 1:
            raise CheckpointError(f"{source} has {len(feeds)} inputs; exfacegan feeds one image batch")
        self.nodes: list[Node] = self._check_nodes(graph, values, feeds[0].name, source)
        if len(graph.output) != 1:
            raise CheckpointError(f"{source} has {len(graph.output)} outputs; an embedder has one, the embeddings")
        self.input_name = feeds[0].name
        self.input_dims = _static_dims(feeds[0])
        self.input_type = feeds[0].type.tensor_type.elem_type
        self.output_name = graph.output[0].name
        if self.output_name not in values and self.output_name not in {o for _, _, outs, _ in self.nodes for o in outs}:
            raise CheckpointError(f"{source}: output {self.output_name!r} is not computed by any node")
        used = {name for _, inputs, _, _ in self.nodes for name in inputs} | {self.output_name}
        extra = sorted(o for _, _, outputs, _ in self.nodes for o in outputs[1:] if o and o in used)
        if extra:
            raise CheckpointError(f"{source} reads secondary outputs ({', '.join(extra)}) that exfacegan cannot compute")
        self.source = source
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

    @staticmethod
    def _check_nodes(graph, values: dict[str, np.ndarray], input_name: str, source: str) -> list[Node]:
        """The nodes to run, in file order, once every one is known to be runnable: attributes of the right
        type and value, inputs computed before (a cycle or a wrong order is refused), outputs named once.
        Constant nodes become entries of `values`."""
        defined = set(values) | {input_name}
        produced_later = {o for node in graph.node for o in node.output}
        nodes = []
        for index, node in enumerate(graph.node):
            where = f"{source}: node {index} ({node.op_type}{f' {node.name!r}' if node.name else ''})"
            attrs = _attributes(node, where)
            inputs = list(node.input)
            fewest, most = INPUTS[node.op_type]
            if not fewest <= len(inputs) <= most or any(not name for name in inputs[:fewest]):
                raise CheckpointError(f"{where}: {len(inputs)} inputs, needs {fewest} to {most}")
            reason = problem(node.op_type, attrs, len(inputs))
            if reason:
                raise CheckpointError(f"{where}: {reason}")
            for name in inputs:
                if name and name not in defined:
                    order = "is computed later (nodes out of order, or a cycle)" if name in produced_later else \
                        "is not an input, initializer or node output"
                    raise CheckpointError(f"{where}: input {name!r} {order}")
            outputs = list(node.output)
            if not outputs or not outputs[0] or any(o in defined for o in outputs if o):
                raise CheckpointError(f"{where}: outputs {outputs} (each named once, the first one present)")
            defined.update(o for o in outputs if o)
            if node.op_type == "Constant":
                values[outputs[0]] = _constant(attrs, where)
            else:
                nodes.append((node.op_type, inputs, outputs, attrs))
        return nodes

    def embedding_dim(self, height: int, width: int) -> int:
        """D of the [N, D] output, from running the graph on the meta device (shapes only, no memory) for
        batches of 2 and 3 zero images; any node that cannot run, or an output that is not [N, D], is refused."""
        shapes = [self._dry_run(batch, height, width) for batch in (2, 3)]
        if any(len(shape) != 2 or shape[0] != batch for shape, batch in zip(shapes, (2, 3))) or \
                shapes[0][1] != shapes[1][1] or shapes[0][1] < 1:
            raise CheckpointError(f"{self.source}: output {self.output_name!r} has shapes {shapes} for batches of "
                                  f"2 and 3 images; an embedder outputs [N, D]")
        return shapes[0][1]

    def _dry_run(self, batch: int, height: int, width: int) -> list[int]:
        def meta(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to("meta")

        env = {name: meta(getattr(self, buffer)) for name, buffer in self._buffers_of.items()}
        env.update({name: t if t.numel() <= _SMALL else meta(t) for name, t in self._constants.items()})
        if 3 * height * width > MAX_VALUES_PER_IMAGE:
            raise CheckpointError(f"{self.source}: input of 3 x {height} x {width} values per image is too large")
        env[self.input_name] = torch.zeros(batch, 3, height, width, device="meta")
        for index, (op, inputs, outputs, attrs) in enumerate(self.nodes):
            args = [env[name] if name else None for name in inputs]
            present = [a for a in args if a is not None]
            if not any(a.is_meta for a in present) and math.prod(max(a.numel(), 1) for a in present) > _SMALL:
                args = [None if a is None else meta(a) for a in args]  # too large to be shape data
            where = f"{self.source}: node {op} computing {outputs[0]!r}"
            try:
                out = OPS[op](*args, **attrs)
            except Exception as error:  # any failure on a shape-only batch is a graph the file cannot run
                message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                raise CheckpointError(f"{where} fails on a batch of {batch} images: {message}") from None
            if out.is_floating_point() and 0 in out.shape:
                raise CheckpointError(f"{where}: computes an empty tensor {list(out.shape)}")
            if out.numel() > batch * MAX_VALUES_PER_IMAGE:
                raise CheckpointError(f"{where}: {list(out.shape)} is over {MAX_VALUES_PER_IMAGE} values per image")
            env[outputs[0]] = out
        out = env[self.output_name]
        return list(out.shape) if out.is_floating_point() else [f"{out.dtype}"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {name: getattr(self, buffer) for name, buffer in self._buffers_of.items()}
        env.update(self._constants)
        env[self.input_name] = x
        for (op, inputs, outputs, attrs), release in zip(self.nodes, self._release):
            env[outputs[0]] = OPS[op](*[env[n] if n else None for n in inputs], **attrs)
            for name in release:
                del env[name]
        return env[self.output_name]


def _constant(attrs: dict, where: str) -> np.ndarray:
    if "value" in attrs:
        return check_tensor(attrs["value"], where)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            array = np.asarray(attrs[key], dtype=dtype)
            if not np.isfinite(array).all():
                raise CheckpointError(f"{where}: {key} holds NaN or infinite values")
            return array
    raise CheckpointError(f"{where}: Constant with {sorted(attrs)} is not supported")


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
    embedding_dim = graph.embedding_dim(dims[2], dims[3])
    declared = _static_dims(model.graph.output[0])
    if declared and (len(declared) != 2 or isinstance(declared[-1], int) and declared[-1] not in (0, embedding_dim)):
        raise CheckpointError(f"{file}: output {graph.output_name!r} is declared {declared} but computes "
                              f"[N, {embedding_dim}]")
    return OnnxEmbedder(graph, (dims[2], dims[3]), mean, std, precision, embedding_dim).to(device)

__all__ = ["OnnxEmbedder", "OnnxGraph", "load_onnx_embedder", "resolve_model_file"]
