"""The device-placed pieces on CUDA, without a GPU: under `FakeTensorMode`, `module.to(cuda:0)` and CUDA factory
calls make tensors that carry only shape, dtype and device, and any op that mixes CPU and CUDA tensors raises
`FakeTensorDeviceMismatchError`. So these tests catch a tensor left on (or brought back to) the host, and wrong
dtypes under fp16/bf16 autocast; they cannot check numerics, kernels, speed, data-dependent ops (NMS, `nonzero`,
a Python `if` on a tensor's value), autograd or training-mode BatchNorm (both need a real CUDA device guard; a
backward pass aborts the process), or host-side NumPy work inside the mode (GAN-Control's attribute draws), which
the `cuda`-marked tests (tests/test_cuda.py) and benchmarks/gpu_check.sh check on a real GPU.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorDeviceMismatchError, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from exfacegan.gans.latent import Truncation, map_z, synthesize, to_uint8
from exfacegan.gans.networks import build_generator

pytestmark = pytest.mark.fake_cuda
CUDA = torch.device("cuda", 0)  # with its index: a bare "cuda" would ask the (absent) driver for the current GPU
PRECISIONS = ("fp32", "fp16", "bf16")
GOLDEN = {"stylegan2": "sg2_64", "stylegan3-r": "sg3r_64"}


# Tensor methods whose Python bindings take a device guard, which a CPU build of PyTorch cannot make for CUDA.
GUARDED_METHODS = (torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.contiguous)


class HostIndexing(TorchFunctionMode):
    """Runs `GUARDED_METHODS` (indexing, `x[i] = v`, `contiguous(memory_format=...)`) on fake tensors labelled CPU
    for the moment, and labels the result CUDA. (These calls are then not checked for mixed devices; every op
    before and after them is.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in GUARDED_METHODS:
            return func(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, FakeTensor) and t.fake_device.type == "cuda"]
        devices = [t.fake_device for t in tensors]
        for tensor in tensors:
            tensor.fake_device = torch.device("cpu")
        try:
            out = func(*args, **kwargs)
        finally:
            for tensor, device in zip(tensors, devices):
                tensor.fake_device = device
        if devices and isinstance(out, FakeTensor):
            out.fake_device = devices[0]
        return out


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """Build modules before entering: parameters made inside the mode are fake CPU tensors that cannot move."""
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, HostIndexing():
            yield mode
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)


def on_cuda(tensor: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> bool:
    return isinstance(tensor, FakeTensor) and tensor.device == CUDA and (dtype is None or tensor.dtype == dtype)


def test_the_harness_catches_a_tensor_left_on_the_host():
    layer = torch.nn.Linear(4, 2)
    with fake_cuda(), torch.no_grad():
        layer = layer.to(CUDA)
        assert on_cuda(layer(torch.randn(3, 4, device=CUDA)))
        with pytest.raises(FakeTensorDeviceMismatchError):
            layer(torch.randn(3, 4))


def _generator(golden_dir, backbone: str) -> torch.nn.Module:
    if backbone == "gan_control":  # the smoke network: the released layout (grouped w, all five controllers)
        from exfacegan.gans.gan_control import small_random_gan_control

        return small_random_gan_control()
    name = GOLDEN[backbone]
    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
    return build_generator("stylegan2" if name.startswith("sg2") else "stylegan3", **kwargs).eval()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backbone", [*GOLDEN, "gan_control"])
def test_generators_map_and_render_on_cuda(golden_dir, backbone, precision):
    """GAN-Control renders without per-image attribute seeds here: its controllers take host-drawn attributes
    (`random_attributes`, NumPy), which cannot run inside the fake mode."""
    generator = _generator(golden_dir, backbone)
    if hasattr(generator.synthesis, "precision"):
        generator.synthesis.precision = precision
    seeds = None if backbone == "gan_control" else torch.from_numpy(np.array([3, 4]))
    with fake_cuda():
        _map_and_render(generator.to(CUDA), precision, seeds)


def _map_and_render(generator: torch.nn.Module, precision: str, seeds: torch.Tensor | None) -> None:
    z = torch.randn(2, generator.z_dim, device=CUDA)
    w = map_z(generator, z)
    images = synthesize(generator, w, truncation=Truncation(psi=0.7), seeds=seeds, precision=precision,
                        noise_mode="random")
    assert on_cuda(w) and on_cuda(images) and images.shape[:2] == (2, 3)
    assert on_cuda(to_uint8(images), torch.uint8)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_iresnet_embedder_on_cuda(precision):
    from exfacegan.embedders import IResNetEmbedder, iresnet

    embedder = IResNetEmbedder(iresnet("iresnet18", num_features=64), precision=precision)
    with fake_cuda():
        _embed_faces(embedder.to(CUDA))


def _embed_faces(embedder: torch.nn.Module) -> None:
    faces = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8, device=CUDA)
    assert on_cuda(embedder(faces)) and on_cuda(embedder(faces.float() / 127.5 - 1))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_onnx_interpreter_on_cuda(tmp_path, precision):
    from exfacegan.embedders import IResNet, load_onnx_embedder

    from test_onnx import torch2onnx

    path = torch2onnx(IResNet([1, 1, 1, 1], num_features=64).eval(), tmp_path / "r.onnx")
    embedder = load_onnx_embedder(path, precision=precision)
    with fake_cuda():
        embedder = embedder.to(CUDA)
        embeddings = embedder(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8, device=CUDA))
        assert on_cuda(embeddings) and embeddings.shape == (2, 64)


def test_mtcnn_nets_on_cuda():
    from exfacegan.align.mtcnn_nets import ONet, PNet, RNet

    nets = [PNet().eval(), RNet().eval(), ONet().eval()]
    with fake_cuda(), torch.no_grad():
        offsets, probability = nets[0].to(CUDA)(torch.randn(1, 3, 60, 60, device=CUDA))
        assert on_cuda(offsets) and on_cuda(probability)
        for net, size in ((nets[1], 24), (nets[2], 48)):
            outputs = net.to(CUDA)(torch.randn(5, 3, size, size, device=CUDA))
            assert all(on_cuda(out) for out in outputs)


def test_batched_solver_tensor_path_on_cuda():
    with fake_cuda():
        _solver_step()


def _solver_step() -> None:
    from exfacegan.boundary.batched import accuracy
    from exfacegan.boundary.newton import SQUARED_HINGE, EigenPreconditioner, rowdot

    features = torch.randn(64, 16, device=CUDA)
    targets = torch.randn(3, 64, device=CUDA).sign()
    train = torch.rand(3, 64, device=CUDA) > 0.3
    preconditioner = EigenPreconditioner(features, (train.sum(0) * 2 > 3).to(features.dtype))
    weights = torch.zeros(3, 16, device=CUDA)
    margins = targets * (weights @ features.T)
    gradient = weights + (train * SQUARED_HINGE.first(margins) * targets) @ features
    step = preconditioner.apply(gradient, preconditioner.diagonal(train * SQUARED_HINGE.second(margins)))
    assert on_cuda(step) and on_cuda(rowdot(step, gradient))
    assert on_cuda(accuracy(weights @ features.T, targets, train))


def test_identity_filter_judge_on_cuda():
    from exfacegan.embedders import IResNetEmbedder, iresnet

    judge = IResNetEmbedder(iresnet("iresnet18", num_features=64))
    with fake_cuda():
        _judge(judge.to(CUDA))


def _judge(judge: torch.nn.Module) -> None:
    """Its similarity tests on judged faces; the reference images' embeddings are filled in directly, because
    marking references without a face (a boolean mask, then `if absent.any()`) depends on data."""
    from exfacegan.stages.identity_filter import IdentityFilter, IdentityFilterSpec
    from exfacegan.stages.offsets import Draw

    spec = IdentityFilterSpec(min_reference_similarity=0.2, max_cross_similarity=0.5)
    judged = IdentityFilter(spec, judge, anchors=None, sides=2)
    for reference in (0, 1):
        judged._anchor_embeddings[reference] = judged._embed(torch.rand(2, 3, 112, 112, device=CUDA) * 2 - 1)
    faces = torch.rand(2, 3, 112, 112, device=CUDA) * 2 - 1
    draws = [Draw(0, 0, 0, 0, 0), Draw(3, 1, 1, 0, 0)]  # (class, reference, side, slot, attempt)
    assert all(on_cuda(test(faces, draws), torch.bool) for test in judged.tests())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_training_forward_with_amp_and_the_margin_head_on_cuda(dtype):
    """Forward (BatchNorm in eval mode: its training-mode kernel, like the backward pass, needs a real GPU) and
    the optimizer step."""
    from exfacegan.embedders import iresnet
    from exfacegan.precision import autocast
    from exfacegan.train.heads import ArcFace
    from exfacegan.train.loop import MarginModel

    model = MarginModel(iresnet("iresnet18", num_features=64), ArcFace(64, 10)).eval()
    with fake_cuda():
        model = model.to(CUDA)
        _train_step(model, dtype)


def _train_step(model: torch.nn.Module, dtype: torch.dtype) -> None:
    from exfacegan.precision import autocast

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(4, 3, 112, 112, device=CUDA).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (4,), device=CUDA)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False), autocast(dtype, CUDA):
        loss = model(images, labels)
    assert on_cuda(loss) and loss.shape == ()
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    assert all(on_cuda(p) for p in model.parameters())
