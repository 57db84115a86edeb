"""The ONNX ops exfacegan's graph interpreter runs, as torch functions of (inputs..., **attributes).

Semantics follow the ONNX operator specification (opsets 7-21) for inference; attributes that
change results and are not implemented here are refused when the graph is loaded (`problem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
# ONNX TensorProto data types -> torch
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
          10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _spatial_pads(pads: Sequence[int] | None, dims: int) -> tuple[list[int], list[int]]:
    pads = list(pads or [0] * 2 * dims)
    return pads[:dims], pads[dims:]


def _torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX [x1_begin, x2_begin, ..., x1_end, x2_end] -> F.pad's order (last axis first)."""
    return [p for b, e in reversed(list(zip(begin, end))) for p in (b, e)]


def conv(x: Tensor, w: Tensor, b: Tensor | None = None, *, strides=None, pads=None, dilations=None, group=1,
         auto_pad="NOTSET", kernel_shape=None) -> Tensor:
    dims = w.ndim - 2
    if b is not None and tuple(b.shape) != tuple(w.shape[:1]):  # the meta device does not check it
        raise ValueError(f"bias of shape {list(b.shape)} for {w.shape[0]} output channels")
    begin, end = _spatial_pads(pads, dims)
    if begin != end:
        x, begin = F.pad(x, _torch_pad(begin, end)), [0] * dims
    function = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return function(x, w.to(x.dtype), None if b is None else b.to(x.dtype), strides or 1, begin, dilations or 1, group)


def max_pool(x: Tensor, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad="NOTSET",
             storage_order=0) -> Tensor:
    dims = len(kernel_shape)
    begin, end = _spatial_pads(pads, dims)
    if begin != end:
        x, begin = F.pad(x, _torch_pad(begin, end), value=-math.inf), [0] * dims
    function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    return function(x, kernel_shape, strides or kernel_shape, begin, dilations or 1, bool(ceil_mode))


def average_pool(x: Tensor, *, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0,
                 auto_pad="NOTSET", dilations=None) -> Tensor:
    dims = len(kernel_shape)
    begin, _ = _spatial_pads(pads, dims)
    function = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    return function(x, kernel_shape, strides or kernel_shape, begin, bool(ceil_mode), bool(count_include_pad))


def batch_norm(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, *, epsilon=1e-5, momentum=0.9,
               training_mode=0, spatial=1) -> Tensor:
    if any(tuple(t.shape) != tuple(x.shape[1:2]) for t in (scale, bias, mean, var)):  # unchecked on meta
        raise ValueError(f"scale, bias, mean, var of shapes {[list(t.shape) for t in (scale, bias, mean, var)]} "
                         f"for {x.shape[1:2]} channels")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def gemm(a: Tensor, b: Tensor, c: Tensor | None = None, *, alpha=1.0, beta=1.0, transA=0, transB=0) -> Tensor:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm of {a.ndim}-D and {b.ndim}-D inputs (both must be matrices)")
    out = alpha * ((a.T if transA else a) @ (b.T if transB else b))
    return out if c is None else out + beta * c


def flatten(x: Tensor, *, axis=1) -> Tensor:
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def reshape(x: Tensor, shape: Tensor, *, allowzero=0) -> Tensor:
    target = [int(s) for s in shape.tolist()]
    if not allowzero:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def transpose(x: Tensor, *, perm=None) -> Tensor:
    return x.permute(*(perm if perm is not None else reversed(range(x.ndim))))


def divide(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def gather(x: Tensor, indices: Tensor, *, axis=0) -> Tensor:
    axis %= x.ndim
    flat = indices.reshape(-1).to(x.device) % x.shape[axis]
    picked = x.index_select(axis, flat)
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))


def _axes(axes_input: Tensor | None, axes) -> list[int] | None:
    return [int(a) for a in axes_input.tolist()] if axes_input is not None else axes


def unsqueeze(x: Tensor, axes_input: Tensor | None = None, *, axes=None) -> Tensor:
    rank = x.ndim + len(_axes(axes_input, axes))
    for axis in sorted(a % rank for a in _axes(axes_input, axes)):
        x = x.unsqueeze(axis)
    return x


def squeeze(x: Tensor, axes_input: Tensor | None = None, *, axes=None) -> Tensor:
    chosen = _axes(axes_input, axes)
    return x.squeeze() if chosen is None else x.squeeze(tuple(a % x.ndim for a in chosen))


OPS: dict[str, Callable[..., Tensor]] = {
    "Conv": conv,
    "BatchNormalization": batch_norm,
    "PRelu": lambda x, slope: torch.where(x >= 0, x, x * slope.to(x.dtype)),
    "Relu": lambda x: F.relu(x),
    "Sigmoid": lambda x: torch.sigmoid(x),
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Neg": lambda x: -x,
    "Mul": lambda a, b: a * b,
    "Div": divide,
    "MatMul": lambda a, b: torch.matmul(a, b.to(a.dtype)),
    "Gemm": gemm,
    "Identity": lambda x: x,
    "Cast": lambda x, *, to, saturate=1: x.to(DTYPES[to]),
    "Dropout": lambda x, *unused, **attrs: x,  # inference: the identity
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True),
    "Shape": lambda x, *, start=0, end=None: torch.tensor(x.shape[start:end], dtype=torch.int64),
    "Gather": gather,
    "Unsqueeze": unsqueeze,
    "Squeeze": squeeze,
}


_POOL = {"auto_pad": "string", "ceil_mode": "int", "dilations": "ints", "kernel_shape": "ints", "pads": "ints",
         "strides": "ints"}
# op -> {attribute: kind} (kinds as ONNX's AttributeProto types); attributes not listed are refused
ATTRIBUTES: dict[str, dict[str, str]] = {
    "Conv": {**{k: v for k, v in _POOL.items() if k != "ceil_mode"}, "group": "int"},
    "BatchNormalization": {"epsilon": "float", "momentum": "float", "training_mode": "int", "spatial": "int"},
    "Gemm": {"alpha": "float", "beta": "float", "transA": "int", "transB": "int"},
    "Cast": {"to": "int", "saturate": "int"},
    "Dropout": {"ratio": "float", "seed": "int", "is_test": "int"},
    "Flatten": {"axis": "int"},
    "Reshape": {"allowzero": "int"},
    "Transpose": {"perm": "ints"},
    "Concat": {"axis": "int"},
    "MaxPool": {**_POOL, "storage_order": "int"},
    "AveragePool": {**_POOL, "count_include_pad": "int"},
    "Shape": {"start": "int", "end": "int"},
    "Gather": {"axis": "int"},
    "Unsqueeze": {"axes": "ints"},
    "Squeeze": {"axes": "ints"},
    "Constant": {"value": "tensor", "value_float": "float", "value_floats": "floats", "value_int": "int",
                 "value_ints": "ints"},
}
REQUIRED = {"MaxPool": {"kernel_shape"}, "AveragePool": {"kernel_shape"}, "Cast": {"to"}, "Concat": {"axis"}}
_TWO = {"PRelu", "Add", "Sub", "Mul", "Div", "MatMul", "Reshape", "Gather"}
# op -> (fewest, most) inputs, optional ones included
INPUTS: dict[str, tuple[int, int]] = {
    **{op: (1, 1) for op in OPS}, **{op: (2, 2) for op in _TWO}, "Conv": (2, 3), "Gemm": (2, 3),
    "BatchNormalization": (5, 5), "Dropout": (1, 3), "Concat": (1, 2**31), "Unsqueeze": (1, 2), "Squeeze": (1, 2),
    "Constant": (0, 0),
}


def _check_window(attrs: dict, dims: int | None) -> str | None:
    """Why kernel_shape/strides/dilations/pads/ceil_mode cannot describe a `dims`-D window, or None."""
    kernel = attrs.get("kernel_shape")
    if kernel is not None and not (1 <= len(kernel) <= 3 and min(kernel) >= 1):
        return f"kernel_shape={kernel}"
    dims = len(kernel) if kernel is not None else dims
    for name, least, count in (("strides", 1, 1), ("dilations", 1, 1), ("pads", 0, 2)):
        values = attrs.get(name)
        if values is not None and ((dims is not None and len(values) != count * dims) or min(values, default=least) < least
                                   or not 1 <= len(values) <= 3 * count):
            return f"{name}={values}"
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={attrs['auto_pad']}"
    return None


def _flags(attrs: dict, names: Sequence[str]) -> str | None:
    return next((f"{name}={attrs[name]}" for name in names if attrs.get(name, 0) not in (0, 1)), None)


def problem(op: str, attrs: dict, inputs: int = 1) -> str | None:
    """Why a node of `op` with these (typed, known) attributes and this many inputs cannot run here, or None."""
    missing = sorted(REQUIRED.get(op, set()) - set(attrs))
    if missing:
        return f"attribute {missing[0]} is required"
    if op in ("Conv", "MaxPool", "AveragePool"):
        reason = _check_window(attrs, None) or _flags(attrs, ["ceil_mode", "count_include_pad"])
        if reason:
            return reason
    if op == "Conv" and attrs.get("group", 1) < 1:
        return f"group={attrs['group']}"
    if op == "AveragePool":
        begin, end = _spatial_pads(attrs.get("pads"), len(attrs["kernel_shape"]))
        if begin != end or any(d != 1 for d in attrs.get("dilations") or ()):
            return "asymmetric pads or dilations"
    if op == "Cast" and attrs["to"] not in DTYPES:
        return f"Cast to ONNX type {attrs['to']}"
    if op == "BatchNormalization":
        if attrs.get("training_mode", 0) or attrs.get("spatial", 1) != 1:
            return "training mode or spatial=0"
        if not (math.isfinite(attrs.get("epsilon", 1e-5)) and attrs.get("epsilon", 1e-5) >= 0):
            return f"epsilon={attrs['epsilon']}"
    if op == "Gemm" and (_flags(attrs, ["transA", "transB"])
                         or not all(math.isfinite(attrs.get(k, 1.0)) for k in ("alpha", "beta"))):
        return "transA/transB not 0 or 1, or alpha/beta not finite"
    if op == "Reshape" and attrs.get("allowzero", 0) not in (0, 1):
        return f"allowzero={attrs['allowzero']}"
    if op == "Transpose" and "perm" in attrs and sorted(attrs["perm"]) != list(range(len(attrs["perm"]))):
        return f"perm={attrs['perm']} is not a permutation"
    if op in ("Squeeze", "Unsqueeze") and len(set(attrs.get("axes") or ())) != len(attrs.get("axes") or ()):
        return f"repeated axes {attrs['axes']}"
    if op == "Unsqueeze" and inputs == 1 and "axes" not in attrs:
        return "attribute axes (or an axes input) is required"
    if op == "Constant" and len(attrs) != 1:
        return f"Constant needs exactly one value attribute, has {sorted(attrs)}"
    return None
