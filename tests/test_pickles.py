"""Official-layout network pickles, written here with pickle's reduce protocol the way NVIDIA's
`torch_utils.persistence` writes them, loaded through the restricted unpickler."""

import json
import os
import pickle
import sys
from collections import OrderedDict

import numpy as np
import pytest
from official_layout import official_modules
import torch

from exfacegan.errors import CheckpointError
from exfacegan.gans import load_generator
from exfacegan.gans.pickles import PersistentRecord, detect_architecture, read_network_pickle
from exfacegan.gans.stylegan2 import Generator

SG2_SOURCE = '''
import pathlib
pathlib.Path({marker!r}).write_text("module_src was executed")

class SynthesisBlock(torch.nn.Module):
    pass

class Generator(torch.nn.Module):
    pass
'''


@pytest.fixture
def official_names(monkeypatch):
    """Importable stand-ins for `torch_utils.persistence` and `dnnlib.util` (tests/official_layout.py)."""
    names, modules = official_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return names


class _Persistent:
    """Pickles as `_reconstruct_persistent_obj(meta)`, as the persistence decorator does."""

    def __init__(self, hook, meta):
        self.hook, self.meta = hook, meta

    def __reduce__(self):
        return (self.hook, (self.meta,))


def _record(module, names, source, init_kwargs=None):
    state = {
        "training": False,
        "_parameters": OrderedDict((k, None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=False))
                                   for k, v in module._parameters.items()),
        "_buffers": OrderedDict((k, None if v is None else v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_modules": OrderedDict((k, _record(v, names, source)) for k, v in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": names.EasyDict(init_kwargs or {}),
        # Plain attributes of official modules include NumPy scalars and arrays.
        "weight_gain": np.float64(0.125),
        "some_array": np.arange(3, dtype=np.float32),
    }
    meta = dict(type="class", version=6, module_src=source, class_name=type(module).__name__, state=state)
    return _Persistent(names.hook, meta)


def _easydicts(value, names):
    if isinstance(value, dict):
        return names.EasyDict({k: _easydicts(v, names) for k, v in value.items()})
    return value


@pytest.fixture
def golden_sg2(golden_dir):
    config = json.loads((golden_dir / "sg2_64_config.json").read_text())["init_kwargs"]
    weights = np.load(golden_dir / "sg2_64_weights.npz")
    generator = Generator(**config)
    generator.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    return config, generator, np.load(golden_dir / "sg2_64_io.npz")


def _write_official(path, names, config, generator, marker, keys=("G", "D", "G_ema")):
    source = SG2_SOURCE.format(marker=str(marker))
    g_ema = _record(generator, names, source, _easydicts(config, names))
    perturbed = Generator(**config)  # G differs from G_ema: the loader must pick G_ema
    g = _record(perturbed, names, source, _easydicts(config, names))
    d = _record(torch.nn.Linear(2, 2), names, "class Discriminator: pass\n")
    networks = {"G": g, "D": d, "G_ema": g_ema}
    data = {k: networks[k] for k in keys}
    data.update(augment_pipe=None, training_set_kwargs=names.EasyDict(path="ffhq.zip", resolution=64))
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def _relative_error(actual, reference):
    return float(np.abs(actual.numpy() - reference).max() / np.abs(reference).max())


def test_official_layout_pickle_uses_expected_globals(tmp_path, official_names, golden_sg2):
    import pickletools

    config, generator, _ = golden_sg2
    path = _write_official(tmp_path / "net.pkl", official_names, config, generator, tmp_path / "marker")
    strings = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if isinstance(arg, str)}
    for name in ["torch_utils.persistence", "_reconstruct_persistent_obj", "dnnlib.util", "EasyDict",
                 "torch._utils", "_rebuild_tensor_v2", "_rebuild_parameter", "torch.storage", "_load_from_bytes"]:
        assert name in strings


def test_official_pickle_loads_and_reproduces_golden_images(tmp_path, official_names, golden_sg2):
    config, generator, io_ = golden_sg2
    marker = tmp_path / "marker"
    path = _write_official(tmp_path / "net.pkl", official_names, config, generator, marker)
    loaded = load_generator(path)
    assert not marker.exists(), "module_src must never be executed"
    assert isinstance(loaded, Generator) and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        ws = loaded.mapping(torch.from_numpy(io_["z"]), None, truncation_psi=0.7)
        images = loaded.synthesis(ws, noise_mode="const")
    assert _relative_error(ws, io_["ws_psi07"]) <= 1e-4
    assert _relative_error(images, io_["img_psi07"]) <= 1e-4


def test_falls_back_to_G_without_G_ema(tmp_path, official_names, golden_sg2):
    config, generator, io_ = golden_sg2
    path = _write_official(tmp_path / "net.pkl", official_names, config, generator, tmp_path / "m", keys=("D",))
    with pytest.raises(CheckpointError, match="holds no generator"):
        load_generator(path)
    source = SG2_SOURCE.format(marker=str(tmp_path / "m"))
    path.write_bytes(pickle.dumps({"G": _record(generator, official_names, source, _easydicts(config, official_names))}))
    loaded = load_generator(path)
    with torch.no_grad():
        images = loaded.synthesis(torch.from_numpy(io_["ws_psi1"]))
    assert _relative_error(images, io_["img_psi1"]) <= 1e-4


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_asking_for_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _RunsShell(marker)}))
    with pytest.raises(CheckpointError, match=r"refused to load.*system"):
        load_generator(path)
    assert not marker.exists()
    # Control: the same bytes, unpickled without restriction, do run the payload.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_payload_hidden_in_a_network_record_is_refused(tmp_path, official_names, golden_sg2):
    config, generator, _ = golden_sg2
    marker = tmp_path / "pwned"
    record = _record(generator.mapping, official_names, "class SynthesisBlock: pass\n")
    record.meta["state"]["_init_kwargs"] = official_names.EasyDict(evil=_RunsShell(marker))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": record}))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_generator(path)
    assert not marker.exists()


def test_payload_in_tensor_storage_bytes_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class EvilStorage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (pickle.dumps(_RunsShell(marker)),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": EvilStorage()}))
    with pytest.raises(CheckpointError):
        load_generator(path)
    assert not marker.exists()


def test_truncated_file_gives_checkpoint_error(tmp_path, official_names, golden_sg2):
    config, generator, _ = golden_sg2
    path = _write_official(tmp_path / "net.pkl", official_names, config, generator, tmp_path / "m")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable network pickle") as info:
        load_generator(path)
    assert "\n" not in str(info.value)


def test_non_network_pickles_give_checkpoint_errors(tmp_path):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="holds no generator"):
        load_generator(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="not a network pickle"):
        load_generator(path)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(CheckpointError):
        load_generator(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.pkl")


def test_architecture_detection():
    assert detect_architecture(PersistentRecord("Generator", "class SynthesisInput(torch.nn.Module): ...", {})) == "stylegan3"
    assert detect_architecture(PersistentRecord("Generator", "class SynthesisBlock(torch.nn.Module): ...", {})) == "stylegan2"
    synthesis = PersistentRecord("SynthesisNetwork", "", {"_modules": {"input": None}})
    assert detect_architecture(PersistentRecord("Generator", "", {"_modules": {"synthesis": synthesis}})) == "stylegan3"
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        detect_architecture(PersistentRecord("Net", "class Foo: pass", {}))


def test_read_network_pickle_returns_inert_records(tmp_path, official_names, golden_sg2):
    config, generator, _ = golden_sg2
    path = _write_official(tmp_path / "net.pkl", official_names, config, generator, tmp_path / "m")
    data = read_network_pickle(path)
    record = data["G_ema"]
    assert isinstance(record, PersistentRecord) and record.class_name == "Generator"
    assert record.state["_init_kwargs"]["mapping_kwargs"].num_layers == config["mapping_kwargs"]["num_layers"]
    assert isinstance(record.state["_modules"]["synthesis"], PersistentRecord)
