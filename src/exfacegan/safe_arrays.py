"""NumPy arrays and scalars, torch storages and tensors, built for `safe_unpickle` from checked pickle arguments.

NumPy objects are made only of plain numbers (bool, signed/unsigned integers, float16/32/64, complex64/128):
a dtype's BUILD state may set its byte order and nothing else (no fields, subarrays or flags, which is what
made NumPy read attacker bytes as pointers), every array's data must hold exactly shape × itemsize bytes, and
results come out in native byte order. Tensors come only from the legacy `torch.save` storage bytes that
`torch.storage._load_from_bytes` receives (parsed here: each declared element count is checked against the
bytes that follow before any allocation) and from `_rebuild_tensor_v2` views whose size, stride and offset
stay inside their storage.
"""

from __future__ import annotations

import io
import math
import struct
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from exfacegan.safe_unpickle import Allowed, Global, Pending, Refused, load_from, shown, text_of

MAX_DIMS = 32
MAX_ELEMENTS = 2**62  # so that no size computation below or in NumPy/torch can overflow
NUMERIC_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001


class NumpyDtype:
    """A plain numeric NumPy dtype as the pickle asks for it; its BUILD state may set only the byte order."""

    __slots__ = ("code", "order")

    def __init__(self, code: str) -> None:
        self.code, self.order = code, "="

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype if self.order in "|=" else dtype.newbyteorder(self.order)


def numpy_dtype(code: Any, align: Any = False, copy: Any = True) -> Pending:
    name = text_of(code, "a NumPy dtype code")
    if name not in NUMERIC_CODES:
        raise Refused(f"NumPy dtype '{shown(name)}' (only bool, integer, float and complex numbers are allowed)")
    return Pending(NumpyDtype(name), _build_dtype)


def _build_dtype(dtype: NumpyDtype, state: Any) -> None:
    plain = (type(state) is tuple and len(state) == 8 and all(type(v) is int for v in state[::5] + state[6:])
             and state[0] == 3 and all(v is None for v in state[2:5]) and state[5:] == (-1, -1, 0))
    order = text_of(state[1], "a NumPy byte order") if plain else ""
    if order not in ("<", ">", "|", "="):
        raise Refused("NumPy dtype state other than a plain number's byte order (fields, subarrays or flags)")
    dtype.order = order


def _resolved(dtype: Any) -> np.dtype:
    if type(dtype) is not NumpyDtype:
        raise Refused(f"NumPy data with a dtype that is a {type(dtype).__name__}, not a plain numeric dtype")
    return dtype.resolve()


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or len(value) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in value):
        raise Refused(f"{what} is not a tuple of at most {MAX_DIMS} non-negative ints")
    return tuple(value)


def _data(value: Any) -> bytes | bytearray:
    if isinstance(value, str):  # Python 2 str read with encoding='latin1'
        return value.encode("latin1")
    if type(value) not in (bytes, bytearray):
        raise Refused(f"NumPy data is a {type(value).__name__}, not bytes")
    return value


def _values(data: bytes | bytearray, dtype: np.dtype, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
    """The array of `shape` that `data` holds, in native byte order; its size checked first."""
    nonzero = math.prod(d for d in shape if d)
    if nonzero * dtype.itemsize >= MAX_ELEMENTS:
        raise Refused(f"NumPy shape {shape} is larger than any array")
    needed = math.prod(shape) * dtype.itemsize
    if needed != len(data):
        raise Refused(f"NumPy array of shape {shape} and dtype {dtype.str} needs {needed:,} bytes; the pickle has "
                      f"{len(data):,}")
    if dtype.kind == "b":
        values = np.frombuffer(data, np.uint8) != 0
    else:
        values = np.frombuffer(data, dtype)
        if not dtype.isnative:
            values = values.astype(dtype.newbyteorder("="))
    return values.reshape(shape, order=order)


def numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> Pending:
    """`_reconstruct(ndarray, (0,), b'b')`: the empty array NumPy's BUILD then fills (see `_build_array`)."""
    if (type(subtype) is not Global or subtype != Global("numpy", "ndarray") or type(shape) is not tuple
            or shape != (0,) or type(typecode) not in (bytes, str) or typecode not in (b"b", "b")):
        raise Refused("numpy _reconstruct other than of an empty plain ndarray")
    return Pending(np.ndarray((0,), np.int8), _build_array)


def _build_array(array: np.ndarray, state: Any) -> None:
    if type(state) is not tuple or len(state) != 5 or type(state[0]) is not int or state[0] != 1:
        raise Refused("NumPy array state is not (1, shape, dtype, fortran, bytes)")
    _, shape, dtype, fortran, data = state
    if type(fortran) is not bool:
        raise Refused("NumPy array state with a non-bool Fortran flag")
    values = _values(_data(data), _resolved(dtype), _dims(shape, "a NumPy shape"), "F" if fortran else "C")
    array.__setstate__((1, values.shape, values.dtype, fortran, values.tobytes(order="F" if fortran else "C")))


def numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    return _values(_data(data), _resolved(dtype), ())[()]


def numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
    if order not in ("C", "F") or axis_order is not None:
        raise Refused("numpy _frombuffer with an order other than 'C' or 'F'")
    return _values(_data(buffer), _resolved(dtype), _dims(shape, "a NumPy shape"), order)


def numpy_calls() -> dict[tuple[str, str], Any]:
    """The NumPy globals of pickled arrays and scalars, under both of NumPy's module names."""
    calls: dict[tuple[str, str], Any] = {("numpy", "dtype"): numpy_dtype}
    for package in ("numpy.core", "numpy._core"):
        calls[(f"{package}.multiarray", "_reconstruct")] = numpy_reconstruct
        calls[(f"{package}.multiarray", "scalar")] = numpy_scalar
        calls[(f"{package}.numeric", "_frombuffer")] = numpy_frombuffer
    return calls


NUMPY_NAMES = frozenset({("numpy", "ndarray")})


class LegacyStorage:
    """A storage from legacy `torch.save` bytes: `numel` elements of `dtype`, `data` a flat tensor once read."""

    __slots__ = ("dtype", "numel", "data")

    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.dtype, self.numel, self.data = dtype, numel, None


_LEGACY = Allowed(calls={}, classes={}, kind="a legacy torch.save storage", holds="storage types",
                  names=frozenset(("torch", name) for name in STORAGE_DTYPES))


def _legacy_persistent(storages: dict[str, LegacyStorage]) -> Any:
    def persistent(pid: Any) -> LegacyStorage:
        if type(pid) is not tuple or len(pid) != 6:
            raise Refused("a storage persistent id that is not (storage, type, key, location, numel, view)")
        kind, storage_type, key, _, numel, view = pid
        if text_of(kind, "a persistent id") != "storage" or not isinstance(storage_type, Global) \
                or storage_type.name not in STORAGE_DTYPES or type(key) not in (str, bytes):
            raise Refused("a persistent id that is not a plain storage")
        if type(numel) is not int or numel < 0 or view is not None:
            raise Refused("a storage with a negative size or a view")
        dtype = STORAGE_DTYPES[storage_type.name]
        storage = storages.setdefault(key, LegacyStorage(dtype, numel))
        if (storage.dtype, storage.numel) != (dtype, numel):
            raise Refused("one storage key declared twice with different types or sizes")
        return storage
    return persistent


def storage_from_bytes(blob: Any) -> LegacyStorage:
    """What `torch.storage._load_from_bytes(blob)` returns, read from the legacy format without torch.load."""
    if type(blob) is not bytes:
        raise Refused(f"tensor storage given as {type(blob).__name__}, not bytes")
    handle, size = io.BytesIO(blob), len(blob)
    header = [load_from(handle, size, _LEGACY) for _ in range(3)]
    if [type(item) for item in header] != [int, int, dict] or header[:2] != [_LEGACY_MAGIC, _LEGACY_VERSION] \
            or header[2].get("little_endian") is not True:
        raise Refused("tensor storage bytes without the little-endian legacy torch.save header")
    storages: dict[str, LegacyStorage] = {}
    result = load_from(handle, size, _LEGACY, persistent=_legacy_persistent(storages))
    keys = load_from(handle, size, _LEGACY)
    if type(result) is not LegacyStorage or type(keys) is not list or len(keys) != len(storages) \
            or not all(type(key) in (str, bytes) and key in storages for key in keys):
        raise Refused("tensor storage bytes that hold something else than one storage and its key")
    for key in keys:
        storage = storages[key]
        count = handle.read(8)
        if len(count) != 8 or struct.unpack("<q", count)[0] != storage.numel:
            raise Refused(f"storage data declares another element count than its header ({storage.numel:,})")
        nbytes = storage.numel * torch.empty((), dtype=storage.dtype).element_size()
        if nbytes > size - handle.tell():
            raise Refused(f"storage of {storage.numel:,} elements ({nbytes:,} bytes) where {size - handle.tell():,} "
                          "bytes are left")
        raw = torch.empty(nbytes, dtype=torch.uint8)
        raw.numpy()[:] = np.frombuffer(blob, np.uint8, nbytes, handle.tell())
        handle.seek(nbytes, io.SEEK_CUR)
        storage.data = raw != 0 if storage.dtype == torch.bool else raw.view(storage.dtype)
    return result


def _grad_flags(dtype: torch.dtype, requires_grad: Any, hooks: Any, metadata: Any = None) -> bool:
    if type(requires_grad) is not bool or (requires_grad and not (dtype.is_floating_point or dtype.is_complex)):
        raise Refused("a tensor whose requires_grad is not a bool, or is True for integers")
    if type(hooks) not in (dict, OrderedDict) or hooks or not (metadata is None or (type(metadata) is dict and not metadata)):
        raise Refused("a tensor with backward hooks or metadata")
    return requires_grad


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                   metadata: Any = None) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2`, for a view that lies inside its storage."""
    if type(storage) is not LegacyStorage or storage.data is None:
        raise Refused("a tensor whose data is not a storage read from the file")
    size, stride = _dims(size, "a tensor size"), _dims(stride, "a tensor stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride):
        raise Refused("a tensor with a negative offset or a stride of another length than its size")
    count = math.prod(size)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if count else offset - 1
    if count > storage.numel or last >= storage.numel or max(stride, default=0) >= MAX_ELEMENTS:
        raise Refused(f"a tensor of size {size}, stride {stride} and offset {offset:,} reaches past its storage of "
                      f"{storage.numel:,} elements")
    flag = _grad_flags(storage.dtype, requires_grad, hooks, metadata)
    return storage.data.as_strided(size, stride, offset).requires_grad_(flag)


def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> torch.nn.Parameter:
    """`torch._utils._rebuild_parameter`, of a tensor this reader made."""
    if type(data) is not torch.Tensor:
        raise Refused(f"a Parameter of a {type(data).__name__}, not of a tensor")
    return torch.nn.Parameter(data, requires_grad=_grad_flags(data.dtype, requires_grad, hooks))


TORCH_CALLS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): storage_from_bytes,
}
