"""Official NVIDIA network pickles (StyleGAN2-ADA-PyTorch, StyleGAN3) loaded WITHOUT running their code.

An official pickle is a dict {G, D, G_ema, augment_pipe, training_set_kwargs}; each network
is pickled as a call `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose `meta`
carries the Python source of the defining module (`module_src`), the class name and the
module's `__dict__` (`state`). Unpickling it the official way executes `module_src`.

Here `exfacegan.safe_unpickle` reads the file (see its docstring for the guarantees and why PyTorch's own
weights-only unpickler does not fit): it resolves only the globals such a file needs (`NETWORK_PICKLE`);
anything else, e.g. `os.system`, is refused with a `CheckpointError` naming it, before anything is called.
The persistence hook becomes a function returning a plain `PersistentRecord`; `module_src` is kept as text
and never executed. Tensors come from `exfacegan.safe_arrays` (the legacy `torch.save` storage bytes parsed
there, sizes checked against the bytes present), NumPy values only of plain numeric dtypes. The generator
record is then rebuilt as our own module: architecture detected from the record, constructed from its
`_init_kwargs`, parameters and buffers gathered from the nested `_modules` states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exfacegan.errors import CheckpointError
from exfacegan.gans.networks import build_generator
from exfacegan.safe_arrays import NUMPY_NAMES, TORCH_CALLS, numpy_calls
from exfacegan.safe_unpickle import Allowed, latin1_bytes, ordered_dict, plain_set, read_pickle

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
    """`torch_utils.persistence._reconstruct_persistent_obj(meta)`, as inert data."""
    if type(meta) is not dict or type(meta.get("type")) is not str or meta["type"] != "class" \
            or type(meta.get("state")) is not dict \
            or type(meta.get("class_name")) is not str or type(meta.get("module_src", "")) is not str:
        raise CheckpointError("malformed persistent object in the pickle (expected a 'class' record with a state dict)")
    version = meta.get("version")
    return PersistentRecord(class_name=meta["class_name"], module_src=meta.get("module_src", ""),
                            state=dict(meta["state"]), version=version if type(version) is int else None)


NETWORK_PICKLE = Allowed(
    calls={
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
        ("collections", "OrderedDict"): ordered_dict,
        ("builtins", "set"): plain_set,
        ("_codecs", "encode"): latin1_bytes,
        **TORCH_CALLS,
        **numpy_calls(),
    },
    classes={("dnnlib.util", "EasyDict"): EasyDict},
    names=NUMPY_NAMES,
    kind="network pickle",
    holds="tensors, NumPy numbers and arrays, dicts and StyleGAN persistence records",
)


def read_network_pickle(path: str | Path) -> Any:
    """Unpickle an official network pickle into plain data and `PersistentRecord`s."""
    return read_pickle(path, NETWORK_PICKLE, CheckpointError)


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
