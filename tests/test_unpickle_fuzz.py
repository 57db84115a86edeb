"""Property-based fuzzing of the `.bin` reader and the GAN-pickle reader, in process.

Property: whatever the bytes (valid files with flipped, cut, deleted or inserted bytes and opcodes, or random
opcode streams), the reader returns a result or raises an `ExFaceGANError` whose message is one line; never any
other exception, never a crash. `EXFACEGAN_FUZZ_EXAMPLES` raises the number of examples for a longer local run.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from official_layout import official_modules
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from exfacegan.errors import ExFaceGANError
from exfacegan.gans.pickles import read_network_pickle
from exfacegan.train.evaluation import read_bin

EXAMPLES = int(os.environ.get("EXFACEGAN_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _bin_files() -> list[bytes]:
    encoded = [_png(0), _png(1)]
    python2 = (b"\x80\x02](" + b"".join(b"T" + struct.pack("<I", len(e)) + e for e in encoded) + b"e](\x88e\x86.")
    arrays = ([np.frombuffer(e, np.uint8) for e in encoded], np.array([True]))
    return [python2, pickle.dumps((encoded, [True]), protocol=2), pickle.dumps(arrays, protocol=4),
            pickle.dumps(arrays, protocol=5)]


def _network_pickles() -> list[bytes]:
    """Small pickles in the official layout (persistence hook, EasyDict, tensors, NumPy values, sets)."""
    names, modules = official_modules()
    _reconstruct_persistent_obj, EasyDict = names.hook, names.EasyDict

    class Record:
        def __init__(self, meta):
            self.meta = meta

        def __reduce__(self):
            return (_reconstruct_persistent_obj, (self.meta,))

    state = {"_parameters": OrderedDict(weight=torch.nn.Parameter(torch.randn(3, 2), requires_grad=False)),
             "_buffers": OrderedDict(noise=torch.arange(4.0)[::2], mask=torch.tensor([True, False])),
             "_non_persistent_buffers_set": {"x"}, "_init_kwargs": EasyDict(w_dim=8, sub=EasyDict(a=1)),
             "gain": np.float32(0.5), "array": np.arange(4, dtype=">i2").reshape(2, 2)}
    meta = dict(type="class", version=6, module_src="class SynthesisBlock: pass", class_name="Generator", state=state)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        return [pickle.dumps({"G_ema": Record(meta), "augment_pipe": None}, protocol=p) for p in (2, 4, 5)]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


BINS, NETWORKS = _bin_files(), _network_pickles()
_NAMES = ["numpy\ndtype", "numpy\nndarray", "numpy._core.multiarray\n_reconstruct", "numpy._core.multiarray\nscalar",
          "numpy._core.numeric\n_frombuffer", "_codecs\nencode", "collections\nOrderedDict", "builtins\nset",
          "__builtin__\nset", "dnnlib.util\nEasyDict", "torch_utils.persistence\n_reconstruct_persistent_obj",
          "torch._utils\n_rebuild_tensor_v2", "torch._utils\n_rebuild_parameter", "torch.storage\n_load_from_bytes",
          "torch\nFloatStorage", "posix\nsystem", "builtins\neval", "copyreg\n_reconstructor"]
_LINES = ["0", "1", "-3", "'ab'", "abc", "1.5", "99999999999999999999", "01", "True", "S'x'"]


def _opcode(op: pickletools.OpcodeInfo) -> st.SearchStrategy[bytes]:
    """One opcode with an argument of the right form (lengths mostly honest, sometimes not)."""
    code, arg = op.code.encode("latin1"), op.arg
    if arg is None:
        return st.just(code)
    if arg.n > 0:
        return st.binary(min_size=arg.n, max_size=arg.n).map(lambda b: code + b)
    if arg.n == pickletools.UP_TO_NEWLINE:
        names = op.name in ("GLOBAL", "INST")
        return st.sampled_from(_NAMES if names else _LINES).map(lambda line: code + line.encode() + b"\n")
    width = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
             pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}[arg.n]
    return st.tuples(st.binary(max_size=12), st.integers(-2, 2)).map(
        lambda pair: code + struct.pack(width, max(0, len(pair[0]) + pair[1]) if width != "<i" else len(pair[0]) + pair[1])
        + pair[0])


OPCODES = st.one_of([_opcode(op) for op in pickletools.opcodes])
STREAMS = st.lists(st.one_of(OPCODES, st.sampled_from([b"\x80\x02", b"\x80\x04", b"."])), max_size=40).map(b"".join)


@st.composite
def _mutated(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "delete", "insert", "opcode"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[at:at] = draw(OPCODES)
    return bytes(data)


def _reads_or_refuses_in_one_line(reader, data: bytes, path: Path) -> None:
    path.write_bytes(data)
    try:
        reader(path)
    except ExFaceGANError as error:
        assert "\n" not in str(error), str(error)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_the_fuzzed_files_are_valid_before_mutation(fuzz_dir):
    for data in BINS:
        (fuzz_dir / "ok.bin").write_bytes(data)
        images, issame = read_bin(fuzz_dir / "ok.bin", size=4)
        assert images.shape == (2, 3, 4, 4) and issame.tolist() == [True]
    for data in NETWORKS:
        (fuzz_dir / "ok.pkl").write_bytes(data)
        state = read_network_pickle(fuzz_dir / "ok.pkl")["G_ema"].state
        assert state["_buffers"]["noise"].tolist() == [0.0, 2.0] and state["array"].tolist() == [[0, 1], [2, 3]]


@FUZZ
@given(data=_mutated(BINS))
def test_mutated_bin_files(fuzz_dir, data):
    _reads_or_refuses_in_one_line(lambda path: read_bin(path, size=4), data, fuzz_dir / "mutated.bin")


@FUZZ
@given(data=_mutated(NETWORKS))
def test_mutated_network_pickles(fuzz_dir, data):
    _reads_or_refuses_in_one_line(read_network_pickle, data, fuzz_dir / "mutated.pkl")


@FUZZ
@given(data=STREAMS)
def test_random_opcode_streams(fuzz_dir, data):
    _reads_or_refuses_in_one_line(lambda path: read_bin(path, size=4), data, fuzz_dir / "stream.bin")
    _reads_or_refuses_in_one_line(read_network_pickle, data, fuzz_dir / "stream.pkl")
