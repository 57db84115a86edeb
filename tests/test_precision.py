import pytest
import torch

from exfacegan.embedders import IResNetEmbedder, iresnet
from exfacegan.errors import ConfigError
from exfacegan.gans.latent import synthesize
from exfacegan.gans.stylegan2 import Generator as StyleGAN2
from exfacegan.precision import autocast_dtype, check_precision

SMALL_SG2 = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
                 channel_base=64, channel_max=8)


def test_precision_names_map_to_autocast_dtypes():
    assert autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("fp16", "cuda") is torch.float16 and autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert autocast_dtype("bf16", "cpu") is None and autocast_dtype("auto", "cpu", allow_auto=True) is None


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
