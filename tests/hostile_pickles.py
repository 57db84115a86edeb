"""Hostile pickles assembled opcode by opcode (no binary blobs), for the GAN-pickle and `.bin` readers.

Each builder returns the bytes of a whole pickle. The opcodes are those of `pickletools`; protocol 2 framing
(PROTO 2) is used unless a case needs a later opcode, which the unpicklers accept under any PROTO.
"""

from __future__ import annotations

import pickle
import struct
import zlib

NUMPY = "numpy._core.multiarray"
PROTO = b"\x80\x02"
STOP = b"."
MARK, TUPLE, REDUCE, BUILD, POP = b"(", b"t", b"R", b"b", b"0"
NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
SETITEM, APPEND, TUPLE1, TUPLE2, TUPLE3 = b"s", b"a", b"\x85", b"\x86", b"\x87"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def raw(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def tuple_of(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(function: bytes, *args: bytes) -> bytes:
    return function + tuple_of(*args) + REDUCE


def in_generator(payload: bytes) -> bytes:
    """A network pickle {'G_ema': payload}."""
    return PROTO + EMPTY_DICT + text("G_ema") + payload + SETITEM + STOP


def in_bin(payload: bytes) -> bytes:
    """A .bin pickle (images, issame) whose first image is `payload`."""
    return PROTO + MARK + EMPTY_LIST + payload + APPEND + EMPTY_LIST + TRUE + APPEND + TUPLE2 + STOP


def numpy_dtype(code: str, state: bytes | None = None) -> bytes:
    """`numpy.dtype(code, False, True)`, with BUILD `state` (the tuple's opcodes) when given."""
    made = call(glob("numpy", "dtype"), text(code), FALSE, TRUE)
    return made if state is None else made + state + BUILD


def dtype_state(order: str = "|", names: bytes = NONE, fields: bytes = NONE, elsize: int = -1,
                alignment: int = -1, flags: int = 0) -> bytes:
    return tuple_of(integer(3), text(order), NONE, names, fields, integer(elsize), integer(alignment), integer(flags))


def object_scalar_segfault() -> bytes:
    """An object dtype whose BUILD flags say "holds no pointers", then `scalar` reads 8 bytes as a PyObject*."""
    forged = numpy_dtype("O8", dtype_state(flags=0))
    return call(glob(NUMPY, "scalar"), forged, raw(b"\x41" * 8))


def object_frombuffer_segfault() -> bytes:
    """The same forged object dtype through `_frombuffer`: an array of 8 attacker bytes read as pointers."""
    forged = numpy_dtype("O8", dtype_state(flags=0))
    return call(glob("numpy._core.numeric", "_frombuffer"), raw(b"\x41" * 8), forged, tuple_of(integer(1)), text("C"))


def structured_out_of_range() -> bytes:
    """A 1-byte void dtype with a float64 field at offset 1,000,000, read through `scalar`."""
    fields = EMPTY_DICT + text("a") + tuple_of(numpy_dtype("f8", dtype_state("<")), integer(1_000_000)) + SETITEM
    forged = numpy_dtype("V1", dtype_state(names=tuple_of(text("a")), fields=fields, elsize=1, alignment=1, flags=16))
    return call(glob(NUMPY, "scalar"), forged, raw(b"\x00"))


def huge_ndarray_shape() -> bytes:
    """`_reconstruct(ndarray, (2**40,), b'b')`: NumPy would allocate a terabyte."""
    return call(glob(NUMPY, "_reconstruct"), glob("numpy", "ndarray"), tuple_of(b"\x8a\x06" + (2**40).to_bytes(6, "little")),
                raw(b"b"))


def ndarray_of(code: str, shape: tuple[int, ...], data: bytes, order: str = "<") -> bytes:
    """An array the way NumPy pickles it: `_reconstruct` then BUILD (1, shape, dtype, fortran, data)."""
    empty = call(glob(NUMPY, "_reconstruct"), glob("numpy", "ndarray"), tuple_of(integer(0)), raw(b"b"))
    dims = tuple_of(*(b"\x8a\x08" + struct.pack("<q", d) for d in shape))
    return empty + tuple_of(integer(1), dims, numpy_dtype(code, dtype_state(order)), FALSE, raw(data)) + BUILD


def huge_binbytes8() -> bytes:
    """BINBYTES8 declaring 2**40 bytes in a file of a few dozen."""
    return b"\x8e" + struct.pack("<Q", 2**40) + b"xx"


def length_bomb(opcode: bytes, width: str = "<Q") -> bytes:
    return opcode + struct.pack(width, 2**31 - 1 if width == "<I" else 2**40) + b"xx"


def deep_lists(depth: int = 200_000) -> bytes:
    return EMPTY_LIST * depth + APPEND * (depth - 1)


def deep_tuple_key(depth: int = 200_000) -> bytes:
    """A dict whose key is a 1-tuple nested `depth` deep: hashing it recurses in C."""
    return EMPTY_DICT + EMPTY_TUPLE + TUPLE1 * depth + NONE + SETITEM


def self_containing_list() -> bytes:
    return EMPTY_LIST + b"\x94" + b"h\x00" + APPEND


def poison_rebuild_tensor() -> bytes:
    """BUILD on the global `_rebuild_tensor_v2`: setattr(__defaults__) so every later tensor is rebuilt negated."""
    neg = EMPTY_DICT + text("neg") + TRUE + SETITEM
    state = tuple_of(NONE, EMPTY_DICT + text("__defaults__") + tuple_of(neg) + SETITEM)
    return glob("torch._utils", "_rebuild_tensor_v2") + state + BUILD + POP


def poison_class(module: str, name: str, attribute: str = "poisoned") -> bytes:
    """BUILD on an allowed class: setattr(cls, attribute, True)."""
    state = tuple_of(NONE, EMPTY_DICT + text(attribute) + TRUE + SETITEM)
    return glob(module, name) + state + BUILD + POP


def legacy_storage(numel_in_pickle: int, numel_in_file: int, payload: bytes, type_name: str = "FloatStorage",
                   key: str = "0", view: bytes = NONE) -> bytes:
    """`torch.save(storage, _use_new_zipfile_serialization=False)` bytes, with chosen element counts."""
    magic = PROTO + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + STOP
    version = PROTO + b"M\xe9\x03" + STOP
    info = PROTO + EMPTY_DICT + text("little_endian") + TRUE + SETITEM + STOP
    pid = tuple_of(text("storage"), glob("torch", type_name), text(key), text("cpu"),
                   b"\x8a\x08" + struct.pack("<q", numel_in_pickle), view)
    main = PROTO + pid + b"Q" + STOP
    keys = PROTO + EMPTY_LIST + text(key) + APPEND + STOP
    return magic + version + info + main + keys + struct.pack("<q", numel_in_file) + payload


def storage(blob: bytes) -> bytes:
    return call(glob("torch.storage", "_load_from_bytes"), raw(blob))


def tensor(blob: bytes, offset: int, size: tuple[int, ...], stride: tuple[int, ...], requires_grad: bytes = FALSE) -> bytes:
    ints = lambda values: tuple_of(*(b"\x8a\x08" + struct.pack("<q", v) for v in values))  # noqa: E731
    hooks = call(glob("collections", "OrderedDict"))
    return call(glob("torch._utils", "_rebuild_tensor_v2"), storage(blob), integer(offset), ints(size), ints(stride),
                requires_grad, hooks)


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def good_tensor(*values: float) -> bytes:
    return tensor(legacy_storage(len(values), len(values), floats(*values)), 0, (len(values),), (1,))


def shell(marker: str) -> bytes:
    return call(glob("posix", "system"), text(f"touch {marker}"))


def unpickled_normally(data: bytes):
    """The bytes through pickle.loads, for the controls that prove a payload is live."""
    return pickle.loads(data)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (PIL reads the size from this header)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def two_images(image: bytes) -> bytes:
    """Two copies of `image` for `in_bin` (which appends the last one)."""
    return raw(image) + APPEND + raw(image)
