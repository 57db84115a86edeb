"""Official NVIDIA network pickles (StyleGAN2-ADA-PyTorch, StyleGAN3) loaded WITHOUT running their code.

An official pickle is a dict {G, D, G_ema, augment_pipe, training_set_kwargs}; each network
is pickled as a call `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose `meta`
carries the Python source of the defining module (`module_src`), the class name and the
module's `__dict__` (`state`). Unpickling it the official way executes `module_src`.

Here a restricted unpickler resolves only the globals such a file needs (the list below);
anything else, e.g. `os.system`, is refused with a `CheckpointError` before it can be called.
The persistence hook is replaced by a function returning a plain `PersistentRecord`;
`module_src` is kept as text and never executed. Tensor storages (legacy `torch.save`
bytes) are read by `torch.load(weights_only=True)`. The generator record is then rebuilt as
our own module: architecture detected from the record, constructed from its `_init_kwargs`,
parameters and buffers gathered from the nested `_modules` states.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exfacegan.errors import CheckpointError
from exfacegan.gans.networks import build_generator

GENERATOR_KEYS = ("G_ema", "G")
# Positional constructor arguments of both official Generator classes, in order.
_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a dict whose keys read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class PersistentRecord:
    """What `_reconstruct_persistent_obj(meta)` was asked to build, as inert data."""

    class_name: str
    module_src: str
    state: dict = field(repr=False)
    version: int | None = None


def _persistent_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("malformed persistent object in the pickle (expected a 'class' record with a state dict)")
    return PersistentRecord(
        class_name=str(meta.get("class_name")),
        module_src=str(meta.get("module_src", "")),
        state=dict(meta["state"]),
        version=meta.get("version"),
    )


def _storage_from_bytes(data: bytes) -> Any:
    """Replacement for `torch.storage._load_from_bytes` that allows tensor data only."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("malformed tensor storage in the pickle")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def numpy_globals() -> dict[tuple[str, str], Any]:
    """What NumPy arrays and scalars of plain dtypes need to be unpickled."""
    core = getattr(np, "_core", None) or np.core
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        frombuffer = getattr(core.numeric, "_frombuffer", None)
        if frombuffer is not None:  # arrays pickled with protocol 5 by NumPy >= 1.16
            table[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return table


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    **numpy_globals(),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `allowed_globals`; refuses every other global and persistent id.

    Other file kinds subclass it with their own `allowed_globals`, `kind`, `holds` and `error`.
    """

    allowed_globals: dict[tuple[str, str], Any] = ALLOWED_GLOBALS
    kind = "a network pickle"
    holds = "tensors, NumPy arrays, dicts and StyleGAN persistence records"
    error: type[Exception] = CheckpointError

    def find_class(self, module: str, name: str) -> Any:
        resolved = self.allowed_globals.get((module, name))
        if resolved is None:
            raise self.error(
                f"refused to load: the pickle asks for the global '{module}.{name}', which {self.kind} "
                f"does not need (only {self.holds} are allowed)"
            )
        return resolved

    def persistent_load(self, pid: Any) -> Any:
        raise self.error(f"refused to load: the pickle uses persistent ids, which {self.kind} does not")


def read_network_pickle(path: str | Path) -> Any:
    """Unpickle an official network pickle into plain data and `PersistentRecord`s."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle).load()
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            struct.error, RuntimeError, UnicodeDecodeError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable network pickle (truncated or corrupt?): {reason}") from None


def generator_record(data: Any, source: str | Path = "pickle") -> PersistentRecord:
    """The `G_ema` record of an official pickle's dict (falling back to `G`)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source} is not a network pickle: expected a dict with 'G_ema', got {type(data).__name__}")
    for key in GENERATOR_KEYS:
        record = data.get(key)
        if isinstance(record, PersistentRecord):
            return record
    raise CheckpointError(f"{source} holds no generator: none of {list(GENERATOR_KEYS)} is a network (keys: {sorted(map(str, data))})")


def detect_architecture(record: PersistentRecord) -> str:
    """'stylegan2' or 'stylegan3', from the classes defined in the record's source code, or
    else from the names of the synthesis network's children."""
    source = record.module_src
    if "class SynthesisInput" in source:
        return "stylegan3"
    if "class SynthesisBlock" in source:
        return "stylegan2"
    synthesis = record.state.get("_modules", {}).get("synthesis")
    children = set(synthesis.state.get("_modules", {})) if isinstance(synthesis, PersistentRecord) else set()
    if "input" in children:
        return "stylegan3"
    if "b4" in children:
        return "stylegan2"
    raise CheckpointError(f"cannot tell the architecture of generator class {record.class_name!r}: neither StyleGAN2 nor StyleGAN3")


def _plain(value: Any) -> Any:
    """EasyDicts, tuples and NumPy scalars as plain Python values (constructor arguments)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def init_kwargs(record: PersistentRecord) -> dict[str, Any]:
    """The generator's constructor arguments as stored by the persistence decorator."""
    kwargs = _plain(record.state.get("_init_kwargs") or {})
    args = record.state.get("_init_args") or ()
    if len(args) > len(_GENERATOR_ARGS):
        raise CheckpointError(f"unexpected positional constructor arguments in the pickle: {len(args)}")
    kwargs.update(zip(_GENERATOR_ARGS, _plain(list(args))))
    return kwargs


def record_tensors(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict-style {name: tensor} of a record and its nested `_modules` records."""
    state = record.state
    tensors: dict[str, torch.Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            tensors[prefix + name] = value
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"submodule {prefix + name} of the pickle is not a persistent network record")
        tensors.update(record_tensors(child, f"{prefix}{name}."))
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name} in the pickle is {type(value).__name__}, not a tensor")
    return tensors


def load_state_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """load_state_dict with one-line errors naming the first differences."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the generator built from its own arguments: missing {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    module.load_state_dict({k: v.detach() for k, v in tensors.items()}, strict=True)


def load_generator_pickle(
    path: str | Path,
    device: str | torch.device = "cpu",
    build: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Our generator module holding the `G_ema` (else `G`) weights of an official pickle."""
    build = build_generator if build is None else build
    record = generator_record(read_network_pickle(path), path)
    arch = detect_architecture(record)
    kwargs = init_kwargs(record)
    try:
        generator = build(arch, **kwargs)
    except TypeError as error:
        raise CheckpointError(f"{path}: cannot build a {arch} generator from the pickle's arguments: {error}") from None
    load_state_strict(generator, record_tensors(record), path)
    return generator.eval().requires_grad_(False).to(device)
