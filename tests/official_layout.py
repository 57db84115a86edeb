"""Stand-ins for the modules an official NVIDIA network pickle names (`torch_utils.persistence`, `dnnlib.util`),
so that `pickle` writes references to exactly the globals the official files contain."""

from __future__ import annotations

import types


def official_modules() -> tuple[types.SimpleNamespace, dict[str, types.ModuleType]]:
    """(namespace with `hook` and `EasyDict`, {module name: module}) to put into sys.modules while pickling."""

    def _reconstruct_persistent_obj(meta):  # never to be called by the loader
        raise AssertionError("the official persistence hook was called")

    class EasyDict(dict):
        pass

    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")
    _reconstruct_persistent_obj.__module__, EasyDict.__module__ = persistence.__name__, util.__name__
    _reconstruct_persistent_obj.__qualname__, EasyDict.__qualname__ = "_reconstruct_persistent_obj", "EasyDict"
    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    modules = {"torch_utils": types.ModuleType("torch_utils"), persistence.__name__: persistence,
               "dnnlib": types.ModuleType("dnnlib"), util.__name__: util}
    return types.SimpleNamespace(hook=_reconstruct_persistent_obj, EasyDict=EasyDict), modules
