"""`compile: true`: torch.compile'd networks equal eager ones (golden networks, 1e-4 relative), a compile
failure leaves one warning line and eager results, and the setting is checked and kept out of the fingerprints."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from exfacegan.app import stage_fingerprints
from exfacegan.compiled import compile_embedder, compile_generator, compile_module
from exfacegan.config import register_resolvers
from exfacegan.errors import DataError
from exfacegan.run import CONFIG_DIR



def _golden_generator(golden_dir, name):
    from exfacegan.gans.networks import build_generator

    arch = {"sg2": "stylegan2", "sg3": "stylegan3", "gan": "gan_control"}[name[:3]]
    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
    weights = np.load(golden_dir / f"{name}_weights.npz")
    generator = build_generator(arch, **kwargs).eval()
    generator.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    return generator, np.load(golden_dir / f"{name}_io.npz")


def _relative(actual: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(actual.numpy() - reference).max() / np.abs(reference).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sg2_64", "sg3t_64", "sg3r_64"])
def test_compiled_synthesis_equals_the_official_output(golden_dir, name, capsys):
    generator, io = _golden_generator(golden_dir, name)
    compile_generator(generator)
    with torch.inference_mode():
        images = generator.synthesis(torch.from_numpy(io["ws_psi1"]), noise_mode="const")
    assert _relative(images, io["img_psi1"]) <= 1e-4
    assert "torch.compile failed" not in capsys.readouterr().err  # compiled, not the eager fallback


@pytest.mark.slow
def test_compiled_iresnet_equals_the_official_output(golden_dir, capsys):
    from exfacegan.embedders.iresnet import IResNet

    config = json.loads((golden_dir / "iresnet_small_config.json").read_text())
    weights = np.load(golden_dir / "iresnet_small_weights.npz")
    io = np.load(golden_dir / "iresnet_small_io.npz")
    network = IResNet(**config["init_kwargs"]).eval()
    network.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    compile_module(network, "iresnet")
    with torch.inference_mode():
        embeddings = network(torch.from_numpy(io["x"]))
    assert _relative(embeddings, io["emb"]) <= 1e-4
    assert "torch.compile failed" not in capsys.readouterr().err


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:
            raise DataError("want [N, D]")
        return x * 2


def _broken_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler\nsecond line")


def test_a_compile_failure_warns_once_in_one_line_and_runs_eager(capsys):
    module = compile_module(Doubler(), "doubler", backend=_broken_backend)
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(module(x), x * 2) and torch.equal(module(x + 1), (x + 1) * 2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exfacegan: warning: doubler: torch.compile failed")
    assert "no C++ compiler" in lines[0] and lines[0].endswith("running eager")


def test_the_networks_own_errors_pass_through_compiled_code(capsys):
    module = compile_module(Doubler(), "doubler", backend="eager")
    with pytest.raises(DataError, match="want"):
        module(torch.zeros(3))
    assert capsys.readouterr().err == ""
    assert torch.equal(module(torch.ones(1, 2)), torch.full((1, 2), 2.0))


def test_compiling_keeps_the_module_and_its_state_dict():
    from exfacegan.embedders import IResNetEmbedder, iresnet

    embedder = IResNetEmbedder(iresnet("iresnet18"))
    keys = list(embedder.state_dict())
    assert compile_embedder(embedder, backend="eager") is embedder and list(embedder.state_dict()) == keys
    assert type(embedder.network.forward).__name__ == "CompiledForward"


def _compose(*overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", *overrides])


def test_compile_leaves_the_fingerprints_and_precision_does_not():
    base = stage_fingerprints(_compose())
    assert stage_fingerprints(_compose("gan.compile=true", "embedder.compile=true")) == base
    assert stage_fingerprints(_compose("gan.precision=bf16"))["sample"] != base["sample"]
    assert stage_fingerprints(_compose("embedder.precision=bf16"))["sample"] != base["sample"]
