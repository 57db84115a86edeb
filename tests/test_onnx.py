"""ONNX face models run by exfacegan's graph interpreter, checked against onnxruntime on the same files.

The files are made here as insightface's arcface_torch `torch2onnx.py` makes them: TorchScript exporter,
opset 11, input named `data`, eval mode (BatchNorm folded into the convolutions), then the input's batch
dimension marked free (the output keeps its declared batch of 1).
"""

import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from exfacegan import weights
from exfacegan.cli.networks import build_embedder
from exfacegan.embedders import IResNet, iresnet, load_onnx_embedder
from exfacegan.errors import CheckpointError, ConfigError


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics and PReLU slopes, so that folding them into the convolutions matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            elif isinstance(module, torch.nn.Conv2d):  # variance-preserving, so that 50 layers stay finite
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.5)
    return model.eval()


def torch2onnx(model: torch.nn.Module, path, size=(112, 112), dynamic: bool = False) -> str:
    example = torch.randn(1, 3, *size)
    axes = {"data": {0: "batch"}} if dynamic else None
    torch.onnx.export(model.eval(), example, str(path), input_names=["data"], opset_version=11, dynamo=False,
                      dynamic_axes=axes)
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(proto, str(path))
    return str(path)


def onnxruntime_embeddings(path, model_input: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: model_input.astype(np.float32)})[0]
    out = out.reshape(len(out), -1)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def assert_relative_close(ours: torch.Tensor, reference: np.ndarray, tolerance: float = 1e-4) -> None:
    assert ours.dtype == torch.float32 and tuple(ours.shape) == reference.shape
    error = np.linalg.norm(ours.numpy() - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert error.max() <= tolerance, error


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    torch.manual_seed(0)
    return torch2onnx(_randomize(IResNet([1, 1, 1, 1], num_features=64)), tmp_path_factory.mktemp("onnx") / "r.onnx")


def _faces(n: int, seed: int = 1, size: int = 112) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_the_file_is_made_as_the_model_zoo_files(small_file):
    proto = onnx.load(small_file)
    assert {n.op_type for n in proto.graph.node} <= {"Conv", "BatchNormalization", "PRelu", "Add", "Identity",
                                                      "Flatten", "Gemm"}
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 64]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_embeddings_equal_onnxruntime(small_file, batch, kind):
    faces = _faces(batch)
    pixels = faces.numpy().astype(np.float32)
    images = faces if kind == "uint8" else faces.float() / 127.5 - 1
    ours = load_onnx_embedder(small_file)(images)
    assert_relative_close(ours, onnxruntime_embeddings(small_file, (pixels - 127.5) / 127.5))
    assert torch.allclose(ours.norm(dim=1), torch.ones(batch))


def test_mean_and_std_per_channel(small_file):
    faces = _faces(3)
    mean, std = [120.0, 127.5, 135.0], [128.0, 60.0, 100.0]
    model_input = (faces.numpy().astype(np.float32) - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    assert_relative_close(load_onnx_embedder(small_file, mean=mean, std=std)(faces),
                          onnxruntime_embeddings(small_file, model_input))


class _OtherOps(torch.nn.Module):
    """A model using the other ops face models commonly hold (pooling, attention-like products, reshapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=(1, 0))
        self.fc = torch.nn.Linear(16 * 16, 16)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(F.adaptive_avg_pool2d(x, 1))
        pooled = F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        x = F.max_pool2d(x * gate, 3, 2, padding=1, ceil_mode=True) - pooled / 3.0
        x = torch.cat([x, -x], dim=1)
        n, c = x.shape[:2]
        tokens = x.reshape(n, c, -1).transpose(1, 2)  # [n, hw, c]
        x = torch.matmul(tokens.transpose(1, 2), tokens) / tokens.shape[1]  # [n, c, c]
        return self.fc(x.reshape(n, -1)) + 0.5


def test_other_common_ops_equal_onnxruntime(tmp_path):
    torch.manual_seed(0)
    path = torch2onnx(_OtherOps(), tmp_path / "ops.onnx", size=(32, 30), dynamic=True)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Relu", "Sigmoid", "GlobalAveragePool", "MaxPool", "AveragePool", "Mul", "Sub", "Div", "Concat", "Reshape",
            "Transpose", "MatMul", "Constant", "Shape", "Gather", "Unsqueeze", "Add", "Neg", "Cast"} <= ops, ops
    faces = _faces(4, size=32)[..., :30]
    ours = load_onnx_embedder(path)(faces)
    assert_relative_close(ours, onnxruntime_embeddings(path, (faces.numpy().astype(np.float32) - 127.5) / 127.5))


def test_other_sizes_are_resized_to_the_models_input(small_file):
    images = _faces(2, size=150).float() / 127.5 - 1
    resized = F.interpolate(images, size=(112, 112), mode="bilinear", antialias=True, align_corners=False)
    assert_relative_close(load_onnx_embedder(small_file)(images), onnxruntime_embeddings(small_file, resized.numpy()))


def _graph_file(path, node, input_shape):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_an_unsupported_op_is_refused_naming_it(tmp_path):
    path = _graph_file(tmp_path / "erf.onnx", helper.make_node("Erf", ["data"], ["out"]), ["N", 3, 112, 112])
    with pytest.raises(CheckpointError, match="cannot run: Erf ") as error:
        load_onnx_embedder(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("shape", [["N", 112, 112, 3], ["N", 3, 112], ["N", 3, "H", "W"]])
def test_an_input_that_is_not_n_3_h_w_is_refused(tmp_path, shape):
    path = _graph_file(tmp_path / "nhwc.onnx", helper.make_node("Relu", ["data"], ["out"]), shape)
    with pytest.raises(CheckpointError, match=r"N x 3 x H x W") as error:
        load_onnx_embedder(path)
    assert "\n" not in str(error.value)


def test_missing_file_corrupt_file_and_non_onnx_registry_name_are_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    for source, message in [(tmp_path / "none.onnx", "does not exist"), (tmp_path / "bad.onnx", "cannot read ONNX"),
                            ("stylegan2-ffhq-256", "not an ONNX face model")]:
        with pytest.raises(CheckpointError, match=message) as error:
            load_onnx_embedder(source)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("setting", [{"std": 0.0}, {"mean": [1.0, 2.0]}, {"precision": "fp8"}])
def test_impossible_settings_are_refused_before_the_file_is_read(tmp_path, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        load_onnx_embedder(tmp_path / "not_read.onnx", **setting)


def test_a_registry_name_is_fetched_and_run(small_file, tmp_path, monkeypatch):
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(small_file, "pack/r.onnx")
    monkeypatch.setitem(weights.REGISTRY, "toy-arcface", weights.WeightsSpec(
        archive.as_uri(), "onnx", "toy", weights.sha256_of(archive), "r.onnx", weights.sha256_of(small_file)))
    monkeypatch.setenv("EXFACEGAN_CACHE", str(tmp_path / "cache"))
    faces = _faces(2)
    ours = build_embedder("onnx", small_file, "cpu")(faces)
    assert torch.equal(load_onnx_embedder("toy-arcface")(faces), ours)
    assert (tmp_path / "cache" / "pack" / "r.onnx").read_bytes() == open(small_file, "rb").read()


@pytest.mark.slow
def test_iresnet50_equals_onnxruntime(tmp_path):
    torch.manual_seed(0)
    path = torch2onnx(_randomize(iresnet("iresnet50")), tmp_path / "r50.onnx")
    faces = _faces(3)
    embedder = load_onnx_embedder(path)
    assert embedder.embedding_dim == 512
    assert_relative_close(embedder(faces), onnxruntime_embeddings(path, (faces.numpy().astype(np.float32) - 127.5) / 127.5))
