"""On a real GPU (skipped without one; benchmarks/gpu_check.sh runs these): what the fake_cuda tier cannot check,
i.e. numerics and kernels. Oracles: the official outputs in ../shared/golden, and the same network in fp32."""

import json

import numpy as np
import pytest
import torch

from exfacegan.compiled import compile_generator
from exfacegan.gans.latent import map_z, synthesize
from exfacegan.gans.networks import build_generator

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)
GOLDEN = ("sg2_64", "sg3t_64", "sg3r_64")


def _golden(golden_dir, name):
    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
    weights = np.load(golden_dir / f"{name}_weights.npz")
    generator = build_generator("stylegan2" if name.startswith("sg2") else "stylegan3", **kwargs).eval()
    generator.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    io = np.load(golden_dir / f"{name}_io.npz")
    return generator.to(CUDA), torch.from_numpy(io["ws_psi1"]).to(CUDA), io["img_psi1"]


def _relative(images: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(images.float().cpu().numpy() - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", GOLDEN)
def test_fp32_on_cuda_equals_the_official_output(golden_dir, name):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    generator, ws, reference = _golden(golden_dir, name)
    with torch.inference_mode():
        assert _relative(generator.synthesis(ws, noise_mode="const"), reference) <= 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", GOLDEN)
def test_reduced_precision_on_cuda_stays_within_five_percent(golden_dir, name, precision):
    generator, ws, reference = _golden(golden_dir, name)
    generator.synthesis.precision = precision
    with torch.inference_mode():
        assert _relative(generator.synthesis(ws, noise_mode="const"), reference) <= 5e-2


@pytest.mark.parametrize("name", GOLDEN)
def test_compiled_on_cuda_equals_eager(golden_dir, name, capsys):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    generator, ws, reference = _golden(golden_dir, name)
    compile_generator(generator)
    with torch.inference_mode():
        assert _relative(generator.synthesis(ws, noise_mode="const"), reference) <= 1e-4
    assert "torch.compile failed" not in capsys.readouterr().err


def test_gan_control_attribute_seeds_and_a_training_step_run_on_cuda():
    from exfacegan.embedders import iresnet
    from exfacegan.gans.gan_control import small_random_gan_control
    from exfacegan.precision import autocast
    from exfacegan.train.heads import ArcFace
    from exfacegan.train.loop import MarginModel

    generator = small_random_gan_control().to(CUDA)
    w = map_z(generator, torch.randn(2, generator.z_dim, device=CUDA))
    images = synthesize(generator, w, seeds=torch.tensor([3, 4]), precision="fp16")
    assert images.is_cuda and torch.isfinite(images).all()
    model = MarginModel(iresnet("iresnet18", num_features=64), ArcFace(64, 10)).to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    with autocast(torch.float16, CUDA):
        loss = model(torch.randn(4, 3, 112, 112, device=CUDA), torch.randint(0, 10, (4,), device=CUDA))
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss) and all(p.grad is None or p.grad.is_cuda for p in model.parameters())
