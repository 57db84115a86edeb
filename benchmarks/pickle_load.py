"""Load time of a StyleGAN2 1024 network pickle in the official layout, through the safe reader and,
for comparison, through plain `pickle` with an allow-list (the C unpickler the project used before).

    python benchmarks/pickle_load.py [--repeats 3] [--folder /tmp]

The pickle holds G, D and G_ema as NVIDIA's persistence module writes them (`_reconstruct_persistent_obj`
records, tensors as legacy `torch.save` storages, EasyDicts, NumPy scalars); the three networks are our own
StyleGAN2 1024 generator (D as a generator of the same size: only the byte count matters here). Prints the file
size, the seconds per read of each reader, and the seconds of the whole `load_generator` (read + build).
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import tempfile
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the official layout's stand-ins
from official_layout import official_modules  # noqa: E402
from exfacegan.gans import load_generator
from exfacegan.gans.pickles import EasyDict as OurEasyDict
from exfacegan.gans.pickles import _persistent_record, read_network_pickle
from exfacegan.gans.stylegan2 import Generator

FFHQ_1024 = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs=dict(num_layers=8),
                 channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)


def _official_names() -> types.SimpleNamespace:
    """Importable `torch_utils.persistence` and `dnnlib.util`, so pickle writes the official globals."""
    names, modules = official_modules()
    sys.modules.update(modules)
    return names


class _Persistent:
    def __init__(self, hook: Callable, meta: dict) -> None:
        self.hook, self.meta = hook, meta

    def __reduce__(self) -> tuple:
        return (self.hook, (self.meta,))


def _easydicts(value: object, names: types.SimpleNamespace) -> object:
    if isinstance(value, dict):
        return names.EasyDict({k: _easydicts(v, names) for k, v in value.items()})
    return value


def _record(module: torch.nn.Module, names: types.SimpleNamespace, init_kwargs: dict | None = None) -> _Persistent:
    state = {
        "training": False,
        "_parameters": OrderedDict((k, None if v is None else torch.nn.Parameter(v.detach(), requires_grad=False))
                                   for k, v in module._parameters.items()),
        "_buffers": OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(),
        "_modules": OrderedDict((k, _record(v, names)) for k, v in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": _easydicts(init_kwargs or {}, names),
        "weight_gain": np.float64(0.125),
    }
    source = "class SynthesisBlock(torch.nn.Module):\n    pass\n"
    return _Persistent(names.hook, dict(type="class", version=6, module_src=source, class_name=type(module).__name__,
                                        state=state))


def write_official_pickle(path: Path) -> None:
    names = _official_names()
    with torch.no_grad():
        networks = {key: _record(Generator(**FFHQ_1024), names, FFHQ_1024) for key in ("G", "D", "G_ema")}
    data = {**networks, "augment_pipe": None, "training_set_kwargs": names.EasyDict(path="ffhq.zip", resolution=1024)}
    with path.open("wb") as handle:
        pickle.dump(data, handle, protocol=4)


class _AllowListUnpickler(pickle.Unpickler):
    """The former reader: the C unpickler resolving an allow-list (unsafe; for timing only)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return _persistent_record
        if (module, name) == ("dnnlib.util", "EasyDict"):
            return OurEasyDict
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if module.startswith(("torch", "numpy", "collections", "builtins")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = args.folder / "exfacegan_bench_sg2_1024.pkl"
    write_official_pickle(path)
    try:
        def allow_list() -> object:
            with path.open("rb") as handle:
                return _AllowListUnpickler(handle).load()

        print(f"file: {path.stat().st_size / 2**20:.0f} MiB (G, D, G_ema of a StyleGAN2 1024)")
        print(f"plain pickle + allow-list (before): {_seconds(allow_list, args.repeats):.2f} s")
        print(f"safe reader (read_network_pickle):  {_seconds(lambda: read_network_pickle(path), args.repeats):.2f} s")
        print(f"load_generator (read + build G_ema): {_seconds(lambda: load_generator(path), args.repeats):.2f} s")
    finally:
        path.unlink()


if __name__ == "__main__":
    main()
