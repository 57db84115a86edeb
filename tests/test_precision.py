import json

import numpy as np
import pytest
import torch

from exfacegan.embedders import IResNetEmbedder, iresnet
from exfacegan.errors import ConfigError
from exfacegan.gans.latent import synthesize
from exfacegan.gans.stylegan2 import Generator as StyleGAN2
import exfacegan.precision
from exfacegan.precision import autocast_dtype, check_precision

SMALL_SG2 = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
                 channel_base=64, channel_max=8)


def test_precision_names_map_to_autocast_dtypes():
    assert autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("fp16", "cuda") is torch.float16 and autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert autocast_dtype("fp16", "cpu") is None and autocast_dtype("auto", "cpu", allow_auto=True) is None


def test_bf16_runs_on_the_cpu_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(exfacegan.precision, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    monkeypatch.setattr(exfacegan.precision, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("bf16", "cpu") is None


def test_every_user_refuses_a_bad_precision_with_the_same_message():
    expected = "precision must be one of fp32, fp16, bf16, got 'fp8'"
    for refuse in (lambda: check_precision("fp8"), lambda: IResNetEmbedder(iresnet("iresnet18"), precision="fp8"),
                   lambda: StyleGAN2(**SMALL_SG2, precision="fp8"), lambda: autocast_dtype("fp8", "cpu"),
                   lambda: synthesize(StyleGAN2(**SMALL_SG2), torch.zeros(1, 8), precision="fp8")):
        with pytest.raises(ConfigError) as error:
            refuse()
        assert str(error.value) == expected
    with pytest.raises(ConfigError, match="got 'auto'"):
        check_precision("auto")
    assert check_precision("auto", allow_auto=True) == "auto"


def _golden_generator(golden_dir, name):
    from exfacegan.gans.networks import build_generator

    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
    weights = np.load(golden_dir / f"{name}_weights.npz")
    generator = build_generator("stylegan2" if name.startswith("sg2") else "stylegan3", **kwargs).eval()
    generator.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    return generator, torch.from_numpy(np.load(golden_dir / f"{name}_io.npz")["ws_psi1"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sg2_64", "sg3t_64", "sg3r_64"])
@pytest.mark.parametrize("through", ["network", "synthesize"])
def test_bf16_on_the_cpu_stays_within_five_percent_of_fp32(golden_dir, name, through, monkeypatch):
    """The official fp16 blocks in bf16 (the oracle: the same network in fp32; bf16 keeps 8 bits of mantissa),
    through the network's own option and through `synthesize` (which also autocasts the rest)."""
    monkeypatch.setattr(exfacegan.precision, "cpu_has_native_bf16", lambda: True)
    generator, ws = _golden_generator(golden_dir, name)
    with torch.inference_mode():
        reference = generator.synthesis(ws, noise_mode="const")
        generator.synthesis.precision = "bf16"
        if through == "network":
            reduced = generator.synthesis(ws, noise_mode="const")
        else:
            reduced = synthesize(generator, ws[:, 0], precision="bf16")
            reference = synthesize(generator, ws[:, 0], precision="fp32")
    error = float((reduced - reference).abs().max() / reference.abs().max())
    assert reduced.dtype == torch.float32 and 0 < error <= 5e-2, error  # > 0: the bf16 path did run
