"""A hostile corpus for the GAN-pickle and `.bin` readers: every file must end in ONE `exfacegan: error:` line
with exit status 2, run nothing (no marker file), and leave torch.load unpoisoned.

Each file is built here from opcodes (`hostile_pickles`). Against the unpickler this project used before
(`pickle.Unpickler` with an allow-list), the `crash` cases killed the process (SIGSEGV), poisoned torch.load
or raised MemoryError; the controls at the bottom show the payloads are live under plain `pickle.loads`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import hostile_pickles as H
from exfacegan.errors import ExFaceGANError
from exfacegan.gans import load_generator
from exfacegan.gans.pickles import EasyDict
from exfacegan.train.evaluation import read_bin
from hostile import load_isolated

TESTS = Path(__file__).resolve().parent
LOADERS = {"gan": ("exfacegan.gans:load_generator", load_generator),
           "bin": ("exfacegan.train.evaluation:read_bin", read_bin)}


@dataclass(frozen=True)
class Case:
    name: str
    target: str  # "gan" or "bin"
    payload: Callable[[str], bytes]  # marker path -> the payload placed in a network pickle or a .bin
    fragment: str  # what the error line must name
    crash: str = ""  # how the former unpickler failed on it: only run in a separate process

    def data(self, marker: str) -> bytes:
        wrap = H.in_generator if self.target == "gan" else H.in_bin
        return wrap(self.payload(marker))


def _tensor(offset: int, size: tuple[int, ...], stride: tuple[int, ...], numel: int = 4) -> Callable[[str], bytes]:
    blob = H.legacy_storage(numel, numel, H.floats(*range(numel)))
    return lambda marker: H.tensor(blob, offset, size, stride)


def _newobj(cls: bytes, args: bytes) -> bytes:
    return cls + args + b"\x81"


_ONE_FLOAT = H.legacy_storage(1, 1, H.floats(1.0))
CASES = [
    # NumPy: forged dtypes and sizes
    Case("object scalar", "gan", lambda m: H.object_scalar_segfault(), "'O8'", crash="SIGSEGV"),
    Case("object scalar", "bin", lambda m: H.object_scalar_segfault(), "'O8'", crash="SIGSEGV"),
    Case("object frombuffer", "bin", lambda m: H.object_frombuffer_segfault(), "'O8'"),
    Case("structured dtype", "gan", lambda m: H.structured_out_of_range(), "'V1'"),
    Case("forged flags", "gan", lambda m: H.call(H.glob(H.NUMPY, "scalar"), H.numpy_dtype("f8", H.dtype_state(flags=63)),
                                                 H.raw(bytes(8))), "byte order"),
    Case("field names on f8", "bin", lambda m: H.numpy_dtype("f8", H.dtype_state(names=H.tuple_of(H.text("a")))),
         "byte order"),
    Case("dtype built twice", "gan", lambda m: H.numpy_dtype("f8", H.dtype_state("<")) + H.dtype_state(">") + H.BUILD,
         "BUILD on a NumpyDtype"),
    Case("huge ndarray shape", "gan", lambda m: H.huge_ndarray_shape(), "empty plain ndarray", crash="MemoryError"),
    Case("shape beyond data", "bin", lambda m: H.ndarray_of("u1", (2**40,), bytes(8)), "needs 1,099,511,627,776 bytes"),
    Case("empty but huge shape", "gan", lambda m: H.ndarray_of("f8", (0, 2**62), b""), "larger than any array"),
    Case("scalar of wrong length", "gan", lambda m: H.call(H.glob(H.NUMPY, "scalar"), H.numpy_dtype("f8"), H.raw(b"x")),
         "needs 8 bytes"),
    Case("ndarray called directly", "bin", lambda m: H.call(H.glob("numpy", "ndarray"), H.tuple_of(H.integer(9))),
         "only names a type"),
    # BUILD on globals: poisoning
    Case("poisoned _rebuild_tensor_v2", "gan", lambda m: H.poison_rebuild_tensor() + H.good_tensor(1.0),
         "BUILD on the global 'torch._utils._rebuild_tensor_v2'", crash="torch.load poisoned"),
    Case("BUILD on EasyDict", "gan", lambda m: H.poison_class("dnnlib.util", "EasyDict"), "BUILD on the global"),
    Case("BUILD on OrderedDict", "gan", lambda m: H.poison_class("collections", "OrderedDict"), "BUILD on the global"),
    Case("BUILD on _frombuffer", "bin", lambda m: H.poison_class("numpy._core.numeric", "_frombuffer", "__defaults__"),
         "BUILD on the global"),
    Case("BUILD on a tensor", "gan", lambda m: H.good_tensor(1.0) + H.EMPTY_DICT + H.BUILD, "BUILD on a Tensor"),
    # lengths beyond the file
    Case("BINBYTES8", "gan", lambda m: H.huge_binbytes8(), "length field", crash="MemoryError"),
    Case("BINBYTES8", "bin", lambda m: H.huge_binbytes8(), "length field", crash="MemoryError"),
    Case("BINUNICODE8", "gan", lambda m: H.length_bomb(b"\x8d"), "length field"),
    Case("BYTEARRAY8", "bin", lambda m: H.length_bomb(b"\x96"), "length field"),
    Case("FRAME", "gan", lambda m: H.length_bomb(b"\x95"), "length field"),
    Case("BINSTRING", "bin", lambda m: H.length_bomb(b"T", "<I"), "length field"),
    Case("BINUNICODE", "gan", lambda m: H.length_bomb(b"X", "<I"), "length field"),
    Case("LONG4", "gan", lambda m: H.length_bomb(b"\x8b", "<I"), "length field"),
    # nesting
    Case("200,000 nested lists", "gan", lambda m: H.deep_lists(), "deeper than 100", crash="RecursionError"),
    Case("200,000 nested lists", "bin", lambda m: H.deep_lists(), "deeper than 100"),
    Case("deep tuple as a key", "gan", lambda m: H.deep_tuple_key(), "deeper than 100", crash="SIGSEGV"),
    Case("deep tuple as a key", "bin", lambda m: H.deep_tuple_key(), "deeper than 100", crash="SIGSEGV"),
    Case("200,000 MARKs", "gan", lambda m: H.MARK * 200_000, "MARKs nest deeper"),
    Case("list containing itself", "gan", lambda m: H.self_containing_list(), "contains itself"),
    Case("list containing itself", "bin", lambda m: H.self_containing_list(), "contains itself"),
    # legacy torch.save storage bytes
    Case("storage of 2**40 elements", "gan", lambda m: H.storage(H.legacy_storage(2**40, 2**40, b"")),
         "where 0 bytes are left", crash="MemoryError"),
    Case("storage shorter than declared", "gan", lambda m: H.storage(H.legacy_storage(4, 4, H.floats(1, 2))),
         "16 bytes) where 8 bytes are left"),
    Case("storage counts disagree", "gan", lambda m: H.storage(H.legacy_storage(2, 3, H.floats(1, 2, 3))),
         "another element count"),
    Case("storage view", "gan", lambda m: H.storage(H.legacy_storage(1, 1, H.floats(1), view=H.tuple_of(
        H.text("0"), H.integer(0), H.integer(1)))), "view"),
    Case("storage of objects", "gan", lambda m: H.storage(H.legacy_storage(1, 1, bytes(8), "ObjectStorage")),
         "'torch.ObjectStorage'"),
    Case("storage running a shell", "gan", lambda m: H.storage(
        H.PROTO + H.shell(m) + H.STOP), "'posix.system'"),
    Case("storage of text", "gan", lambda m: H.call(H.glob("torch.storage", "_load_from_bytes"), H.text("x")),
         "not bytes"),
    # tensors outside their storage
    Case("tensor offset past storage", "gan", _tensor(4, (1,), (1,)), "reaches past its storage"),
    Case("tensor stride past storage", "gan", _tensor(0, (2,), (4,)), "reaches past its storage"),
    Case("tensor larger than storage", "gan", _tensor(0, (5,), (1,)), "reaches past its storage"),
    Case("expanded tensor", "gan", _tensor(0, (2**40,), (0,)), "reaches past its storage"),
    Case("negative stride", "gan", _tensor(3, (2,), (-1,)), "non-negative ints"),
    Case("negative size", "gan", _tensor(0, (-1,), (1,)), "non-negative ints"),
    Case("tensor of bytes", "gan", lambda m: H.call(H.glob("torch._utils", "_rebuild_tensor_v2"), H.raw(b"x"),
                                                    H.integer(0), H.tuple_of(), H.tuple_of(), H.FALSE, H.EMPTY_DICT),
         "not a storage"),
    Case("tensor with hooks", "gan", lambda m: H.call(H.glob("torch._utils", "_rebuild_tensor_v2"), H.storage(_ONE_FLOAT),
                                                      H.integer(0), H.tuple_of(), H.tuple_of(), H.FALSE,
                                                      H.EMPTY_DICT + H.integer(1) + H.NONE + H.SETITEM), "hooks"),
    Case("parameter of text", "gan", lambda m: H.call(H.glob("torch._utils", "_rebuild_parameter"), H.text("w"),
                                                      H.FALSE, H.EMPTY_DICT), "Parameter of a str"),
    Case("integer parameter with grad", "gan", lambda m: H.call(
        H.glob("torch._utils", "_rebuild_parameter"),
        H.tensor(H.legacy_storage(1, 1, bytes(8), "LongStorage"), 0, (1,), (1,)), H.TRUE, H.EMPTY_DICT),
        "True for integers"),
    # persistent ids, object opcodes, calls with hostile arguments
    Case("BINPERSID", "gan", lambda m: H.text("storage") + b"Q", "persistent ids"),
    Case("PERSID", "bin", lambda m: b"Pstorage\n", "persistent ids"),
    Case("INST of EasyDict", "gan", lambda m: H.MARK + b"idnnlib.util\nEasyDict\n", "INST"),
    Case("OBJ of set", "gan", lambda m: H.MARK + H.glob("builtins", "set") + b"o", "OBJ"),
    Case("NEWOBJ of set", "gan", lambda m: _newobj(H.glob("builtins", "set"), H.tuple_of(H.EMPTY_LIST)), "NEWOBJ"),
    Case("NEWOBJ of the persistence hook", "gan", lambda m: _newobj(
        H.glob("torch_utils.persistence", "_reconstruct_persistent_obj"), H.EMPTY_TUPLE), "NEWOBJ"),
    Case("NEWOBJ of EasyDict with arguments", "gan", lambda m: _newobj(
        H.glob("dnnlib.util", "EasyDict"), H.tuple_of(H.EMPTY_LIST)), "NEWOBJ"),
    Case("NEWOBJ_EX with keywords", "gan", lambda m: H.glob("dnnlib.util", "EasyDict") + H.EMPTY_TUPLE + H.EMPTY_DICT
         + H.text("a") + H.NONE + H.SETITEM + b"\x92", "NEWOBJ"),
    Case("set of a list", "gan", lambda m: H.call(H.glob("builtins", "set"), H.EMPTY_LIST + H.EMPTY_LIST + H.APPEND),
         "cannot be in a set"),
    Case("OrderedDict of text", "gan", lambda m: H.call(H.glob("collections", "OrderedDict"), H.text("abc")),
         "list of pairs"),
    Case("OrderedDict of triples", "gan", lambda m: H.call(H.glob("collections", "OrderedDict"), H.EMPTY_LIST
                                                           + H.tuple_of(H.NONE, H.NONE, H.NONE) + H.APPEND),
         "list of pairs"),
    Case("OrderedDict with a list key", "gan", lambda m: H.call(H.glob("collections", "OrderedDict"), H.EMPTY_LIST
                                                                + H.tuple_of(H.EMPTY_LIST, H.NONE) + H.APPEND),
         "key it cannot hold"),
    Case("persistence hook with a list", "gan", lambda m: H.call(
        H.glob("torch_utils.persistence", "_reconstruct_persistent_obj"), H.EMPTY_LIST), "malformed persistent"),
    Case("too many arguments", "gan", lambda m: H.call(H.glob("builtins", "set"), H.NONE, H.NONE, H.NONE),
         "arguments it does not take"),
    Case("codecs rot13", "bin", lambda m: H.call(H.glob("_codecs", "encode"), H.text("x"), H.text("rot13")),
         "_codecs.encode"),
    Case("REDUCE on a dict", "gan", lambda m: H.EMPTY_DICT + H.EMPTY_TUPLE + H.REDUCE, "REDUCE calls a dict"),
    Case("SETITEM on a tensor", "gan", lambda m: H.good_tensor(1.0) + H.integer(0) + H.integer(5) + H.SETITEM,
         "SETITEM on a Tensor"),
    Case("SETITEM on an array", "bin", lambda m: H.ndarray_of("u1", (1,), b"\x01") + H.integer(0) + H.integer(5)
         + H.SETITEM, "SETITEM on a ndarray"),
    Case("APPEND to a tuple", "bin", lambda m: H.EMPTY_TUPLE + H.NONE + H.APPEND, "APPEND on a tuple"),
    Case("ADDITEMS to a list", "gan", lambda m: H.EMPTY_LIST + H.MARK + H.NONE + b"\x90", "ADDITEMS on a list"),
    Case("EXT1", "gan", lambda m: b"\x82\x01", "extension codes"),
    Case("unknown opcode", "bin", lambda m: b"\xff", "opcode 0xff"),
    Case("READONLY_BUFFER", "bin", lambda m: H.raw(b"x") + b"\x98", "out-of-band"),
    # images inside a .bin
    Case("PNG of 100,000 x 100,000", "bin", lambda m: H.two_images(H.png_header(100_000, 100_000)), "decompression bomb"),
    Case("PNG of 10,000 x 10,000", "bin", lambda m: H.two_images(H.png_header(10_000, 10_000)), "decompression bomb"),
    Case("PNG of 5,000 x 5,000", "bin", lambda m: H.two_images(H.png_header(5_000, 5_000)), "5000x5000 pixels"),
    Case("broken PNG chunk", "bin", lambda m: H.two_images(H.png_header(4, 4)[:33] + b"\x00\x00\x00\x01\xe00\x86\xc6"),
         "cannot read"),
    # code
    Case("os.system", "gan", H.shell, "'posix.system'"),
    Case("os.system", "bin", H.shell, "'posix.system'"),
    Case("STACK_GLOBAL builtins.eval", "gan", lambda m: H.text("builtins") + H.text("eval") + b"\x93"
         + H.tuple_of(H.text(f"open({m!r}, 'w')")) + H.REDUCE, "'builtins.eval'"),
    Case("INST posix.system", "bin", lambda m: H.MARK + H.text(f"touch {m}") + b"iposix\nsystem\n", "INST"),
    Case("newline in a global", "gan", lambda m: H.text("os\nx") + H.text("system") + b"\x93", "'os\\nx.system'"),
]
CASE_IDS = [f"{case.target}: {case.name}" for case in CASES]
# The cases that crashed, poisoned or exhausted memory before, as quick checks; all others run in the slow tier.
QUICK = {"gan: object scalar", "bin: object scalar", "gan: poisoned _rebuild_tensor_v2", "gan: deep tuple as a key"}


@pytest.mark.parametrize("case", [c for c in CASES if not c.crash], ids=[i for c, i in zip(CASES, CASE_IDS) if not c.crash])
def test_hostile_file_is_refused_in_one_line(case, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.bin"
    path.write_bytes(case.data(str(marker)))
    with pytest.raises(ExFaceGANError) as error:
        LOADERS[case.target][1](path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and case.fragment in message, message
    assert not marker.exists()


@pytest.mark.parametrize("case", [pytest.param(c, id=i, marks=() if i in QUICK else pytest.mark.slow)
                                  for c, i in zip(CASES, CASE_IDS)])
def test_hostile_file_is_refused_in_a_capped_process(case, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.bin"
    path.write_bytes(case.data(str(marker)))
    line = load_isolated(LOADERS[case.target][0], path).assert_refused(str(path))
    assert case.fragment in line
    assert not marker.exists()


def test_build_on_a_class_leaves_it_untouched(tmp_path):
    path = tmp_path / "net.pkl"
    path.write_bytes(H.in_generator(H.poison_class("dnnlib.util", "EasyDict")))
    frombuffer = np._core.numeric._frombuffer
    defaults = frombuffer.__defaults__
    with pytest.raises(ExFaceGANError, match="BUILD on the global"):
        load_generator(path)
    path.write_bytes(H.in_bin(H.poison_class("numpy._core.numeric", "_frombuffer", "__defaults__")))
    with pytest.raises(ExFaceGANError, match="BUILD on the global"):
        read_bin(path)
    assert not hasattr(EasyDict, "poisoned") and frombuffer.__defaults__ == defaults


def test_opcode_budget_is_enforced(tmp_path, monkeypatch):
    from exfacegan import safe_unpickle

    monkeypatch.setattr(safe_unpickle, "MAX_OPCODES", 1000)
    path = tmp_path / "long.pkl"
    path.write_bytes(H.in_generator(b"N0" * 600 + H.NONE))
    with pytest.raises(ExFaceGANError, match="more than 1,000 opcodes"):
        load_generator(path)


def test_big_endian_and_fortran_arrays_come_out_native(tmp_path):
    """Byte order handled: '>f4' data reads as the same numbers in a native array (oracle: struct)."""
    values = (1.5, -2.0, 3.25, 0.0, 7.0, -1.0)
    data = struct.pack(">6f", *values)
    path = tmp_path / "x.bin"
    path.write_bytes(H.PROTO + H.ndarray_of("f4", (2, 3), data, order=">") + H.STOP)
    from exfacegan.safe_unpickle import read_pickle
    from exfacegan.train.evaluation import BIN_PICKLE

    array = read_pickle(path, BIN_PICKLE, ExFaceGANError)
    assert array.dtype.isnative and array.shape == (2, 3)
    assert array.ravel().tolist() == list(values)


# Controls: the same payloads, unpickled without restriction, do crash or poison.
def unpickle_file(path: str) -> object:
    return H.unpickled_normally(Path(path).read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("payload, returncode", [(H.object_scalar_segfault(), -11), (H.deep_tuple_key(), -11),
                                                 (H.poison_rebuild_tensor() + H.good_tensor(1.0), 99)],
                         ids=["object scalar", "deep tuple key", "poisoned rebuild"])
def test_controls_payloads_are_live_under_plain_pickle(payload, returncode, tmp_path):
    path = tmp_path / "live.pkl"
    path.write_bytes(H.in_generator(payload))
    assert load_isolated("test_hostile_pickles:unpickle_file", path, cwd=TESTS).returncode == returncode


@pytest.mark.parametrize("nest", [H.deep_lists, lambda depth: H.EMPTY_TUPLE + H.TUPLE1 * (depth - 1)], ids=["lists", "tuples"])
def test_nesting_limit_is_100(nest, tmp_path):
    from exfacegan.safe_unpickle import read_pickle
    from exfacegan.train.evaluation import BIN_PICKLE

    path = tmp_path / "nested.pkl"
    path.write_bytes(H.PROTO + nest(90) + H.STOP)
    value, depth = read_pickle(path, BIN_PICKLE, ExFaceGANError), 1
    while value:
        value, depth = value[0], depth + 1
    assert depth == 90
    path.write_bytes(H.PROTO + nest(110) + H.STOP)
    with pytest.raises(ExFaceGANError, match="deeper than 100"):
        read_pickle(path, BIN_PICKLE, ExFaceGANError)
