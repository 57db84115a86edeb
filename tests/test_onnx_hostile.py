"""Hostile ONNX graphs are refused at load in one CheckpointError line naming the file and the node or
attribute; attribute-sensitive ops (BatchNormalization's epsilon, PRelu's slopes) equal onnxruntime."""
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from exfacegan.embedders import load_onnx_embedder
from exfacegan.errors import CheckpointError, ExFaceGANError
from hostile import load_isolated
from test_onnx import assert_relative_close, onnxruntime_embeddings

FUZZ_EXAMPLES = int(os.environ.get("EXFACEGAN_FUZZ_EXAMPLES", "100"))
SIZE = 8


def _weights(seed: int = 0, epsilon: float = 1e-5, slope: np.ndarray | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W": rng.normal(size=(4, 3, 3, 3)).astype(np.float32) / 5, "B": rng.normal(size=4).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, 4).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32) / 10,
        "mean": rng.normal(size=4).astype(np.float32) / 10,
        "var": np.asarray([0.001, 0.004, 0.02, 0.05], np.float32),  # small, so that epsilon matters
        "slope": (slope if slope is not None else rng.uniform(0, 0.5, (4, 1, 1))).astype(np.float32),
        "G": rng.normal(size=(8, 4)).astype(np.float32), "GB": rng.normal(size=8).astype(np.float32) / 10,
    }


def _model(epsilon: float = 1e-5, slope: np.ndarray | None = None, seed: int = 0) -> onnx.ModelProto:
    """data [N, 3, 8, 8] -> Conv -> BatchNormalization -> PRelu -> GlobalAveragePool -> Flatten -> Gemm -> [N, 8]."""
    nodes = [
        helper.make_node("Conv", ["data", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"], epsilon=epsilon,
                         name="bn"),
        helper.make_node("PRelu", ["b", "slope"], ["p"], name="prelu"),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "G", "GB"], ["out"], transB=1, name="fc"),
    ]
    initializers = [numpy_helper.from_array(a, n) for n, a in _weights(seed, epsilon, slope).items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _faces(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def _equals_onnxruntime(path: Path) -> None:
    faces = _faces()
    ours = load_onnx_embedder(path)(faces)
    assert_relative_close(ours, onnxruntime_embeddings(path, (faces.numpy().astype(np.float32) - 127.5) / 127.5), 1e-5)


def test_batch_normalization_epsilon_equals_onnxruntime(tmp_path):
    path = _save(_model(epsilon=1e-2), tmp_path / "eps.onnx")
    _equals_onnxruntime(path)
    default = load_onnx_embedder(_save(_model(), tmp_path / "default.onnx"))(_faces())
    assert (default - load_onnx_embedder(path)(_faces())).norm(dim=1).min() > 1e-2  # epsilon changes the result


def test_prelu_with_negative_per_channel_slopes_equals_onnxruntime(tmp_path):
    slope = np.asarray([-0.5, 0.3, -1.5, 2.0], np.float32).reshape(4, 1, 1)
    _equals_onnxruntime(_save(_model(slope=slope), tmp_path / "prelu.onnx"))


def test_the_base_model_loads_as_an_8_dim_embedder(tmp_path):
    embedder = load_onnx_embedder(_save(_model(), tmp_path / "m.onnx"))
    assert embedder.embedding_dim == 8 and embedder.input_size == (SIZE, SIZE)
    assert embedder(_faces(2)).shape == (2, 8)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)


def _set_attribute(model: onnx.ModelProto, node: str, **attrs) -> None:
    target = _node(model, node)
    kept = [a for a in target.attribute if a.name not in attrs]
    del target.attribute[:]
    target.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in attrs.items() if v is not None])


def _pooled(kind: str, **attrs) -> onnx.ModelProto:
    """The base model with GlobalAveragePool replaced by `kind` with these attributes (then a fixed 8 x 8 window)."""
    model = _model()
    pool = _node(model, "pool")
    pool.op_type = kind
    pool.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return model


def _edit(edit) -> onnx.ModelProto:
    model = _model()
    edit(model)
    return model


def _rename_input(model: onnx.ModelProto, node: str, index: int, name: str) -> None:
    _node(model, node).input[index] = name


def _huge_initializer(model: onnx.ModelProto) -> None:
    huge = model.graph.initializer.add()
    huge.name, huge.data_type, huge.raw_data = "huge", TensorProto.FLOAT, b"\0" * 16
    huge.dims.extend([100_000, 100_000])


def _reverse(model: onnx.ModelProto) -> None:
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _cycle(model: onnx.ModelProto) -> None:
    _rename_input(model, "conv", 0, "p")  # conv reads prelu's output, which depends on conv


def _nan_weight(model: onnx.ModelProto) -> None:
    weights = _weights()
    weights["G"][3, 1] = np.nan
    model.graph.initializer[7].CopyFrom(numpy_helper.from_array(weights["G"], "G"))


def _float_data_short(model: onnx.ModelProto) -> None:
    short = model.graph.initializer.add()
    short.name, short.data_type = "short", TensorProto.FLOAT
    short.dims.extend([4, 4])
    short.float_data.extend([1.0] * 15)


def _identity_output(model: onnx.ModelProto) -> None:
    del model.graph.node[:]
    model.graph.node.append(helper.make_node("Identity", ["data"], ["out"], name="id"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4]))


def _batch_mixing_reshape(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray([1, -1], np.int64), "flat"))
    _node(model, "fc").output[0] = "fc_out"
    model.graph.node.append(helper.make_node("Reshape", ["fc_out", "flat"], ["out"], name="mix"))


def _first_image_only(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray([0], np.int64), "first"))
    _node(model, "fc").output[0] = "fc_out"
    model.graph.node.append(helper.make_node("Gather", ["fc_out", "first"], ["out"], axis=0, name="first"))


def _no_output(model: onnx.ModelProto) -> None:
    del _node(model, "pool").output[:]


def _two_outputs(model: onnx.ModelProto) -> None:
    model.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))


def _twice_named(model: onnx.ModelProto) -> None:
    _node(model, "flatten").output[0] = "g"


def _channel_mismatch(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((4, 2, 3, 3), np.float32), "W"))


CASES = {
    "AveragePool without kernel_shape": (_pooled("AveragePool"), "node 3 (AveragePool 'pool'): attribute kernel_shape is required"),
    "list-valued Cast to": (_pooled("Cast", to=[1]), "attribute to must be int, got ints"),
    "string-valued Flatten axis": (_edit(lambda m: _set_attribute(m, "flatten", axis="1")), "axis must be int, got string"),
    "unknown attribute": (_edit(lambda m: _set_attribute(m, "fc", gamma=2.0)), "node 5 (Gemm 'fc'): attribute gamma is not supported"),
    "Concat without axis": (_pooled("Concat"), "(Concat 'pool'): attribute axis is required"),
    "Transpose perm with a repeat": (_pooled("Transpose", perm=[0, 1, 1, 2]), "perm=[0, 1, 1, 2] is not a permutation"),
    "Transpose perm of another rank": (_pooled("Transpose", perm=[0, 2, 1]), "Transpose computing 'g' fails"),
    "MaxPool stride 0": (_pooled("MaxPool", kernel_shape=[2, 2], strides=[0, 1]), "strides=[0, 1]"),
    "1e5 x 1e5 initializer": (_edit(_huge_initializer), "tensor 'huge' has dims [100000, 100000] (10000000000 values) but holds 4"),
    "float_data count": (_edit(_float_data_short), "tensor 'short' has dims [4, 4] (16 values) but holds 15"),
    "NaN weight": (_edit(_nan_weight), "tensor 'G' holds NaN"),
    "undefined input": (_edit(lambda m: _rename_input(m, "fc", 0, "nowhere")), "input 'nowhere' is not an input"),
    "cycle": (_edit(_cycle), "node 0 (Conv 'conv'): input 'p' is computed later"),
    "reversed order": (_edit(_reverse), "node 0 (Gemm 'fc'): input 'f' is computed later"),
    "node without output": (_edit(_no_output), "node 3 (GlobalAveragePool 'pool'): outputs []"),
    "output named twice": (_edit(_twice_named), "node 4 (Flatten 'flatten'): outputs ['g']"),
    "two graph outputs": (_edit(_two_outputs), "has 2 outputs"),
    "too few inputs": (_edit(lambda m: _node(m, "prelu").input.pop()), "(PRelu 'prelu'): 1 inputs, needs 2"),
    "Conv bias of another shape (found by fuzzing)": (_edit(lambda m: _rename_input(m, "conv", 2, "data")),
                                                      "bias of shape [2, 3, 8, 8] for 4 output channels"),
    "BatchNormalization scale of another shape": (_edit(lambda m: _rename_input(m, "bn", 1, "GB")),
                                                  "scale, bias, mean, var of shapes [[8], [4], [4], [4]]"),
    "a newline in a node's op (found by fuzzing)": (_edit(lambda m: setattr(_node(m, "pool"), "op_type", "Relu\nX")),
                                                     "holds a name that is not printable UTF-8 text: 'Relu\\nX'"),
    "Gemm of a 4-D input": (_edit(lambda m: _rename_input(m, "fc", 0, "p")), "Gemm of 4-D and 2-D inputs"),
    "Conv channel mismatch": (_edit(_channel_mismatch), "Conv computing 'c' fails on a batch of 2 images"),
    "identity output declared [1, 4]": (_edit(_identity_output), "has shapes [[2, 3, 8, 8], [3, 3, 8, 8]]"),
    "batch-mixing Reshape": (_edit(_batch_mixing_reshape), "has shapes [[1, 16], [1, 24]]"),
    "output of the first image only": (_edit(_first_image_only), "has shapes [[1, 8], [1, 8]]"),
    "declared D differs": (_edit(lambda m: m.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16]))), "declared ['N', 16] but computes [N, 8]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_graph_is_refused_in_one_line_naming_the_node(tmp_path, case):
    model, fragment = CASES[case]
    path = _save(model, tmp_path / "hostile.onnx")
    with pytest.raises(CheckpointError) as error:
        load_onnx_embedder(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and fragment in message, message


@pytest.mark.slow
def test_a_1e5_by_1e5_initializer_is_refused_in_a_capped_process(tmp_path):
    path = _save(_edit(_huge_initializer), tmp_path / "huge.onnx")
    load_isolated("exfacegan.embedders.onnx:load_onnx_embedder", path).assert_refused("tensor 'huge'", "holds 4")


_NAMES = ["data", "W", "B", "scale", "bias", "mean", "var", "slope", "G", "GB", "c", "b", "p", "g", "f", "out", "x"]
_OPS = ["Conv", "BatchNormalization", "PRelu", "GlobalAveragePool", "Flatten", "Gemm", "AveragePool", "MaxPool",
        "Concat", "Transpose", "Reshape", "Cast", "Identity", "Add", "MatMul", "Squeeze", "Unsqueeze", "Gather", "Erf"]
_VALUES = st.one_of(st.integers(-3, 9), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.lists(st.integers(-2, 5), max_size=5), st.sampled_from(["NOTSET", "SAME_UPPER", "VALID"]))
_ATTRS = ["kernel_shape", "strides", "pads", "axis", "perm", "to", "epsilon", "transB", "axes", "group", "ceil_mode",
          "auto_pad", "alpha"]
_MUTATION = st.one_of(
    st.tuples(st.just("op"), st.integers(0, 5), st.sampled_from(_OPS)),
    st.tuples(st.just("input"), st.integers(0, 5), st.integers(0, 4), st.sampled_from(_NAMES)),
    st.tuples(st.just("output"), st.integers(0, 5), st.sampled_from(_NAMES + [""])),
    st.tuples(st.just("attribute"), st.integers(0, 5), st.sampled_from(_ATTRS), st.none() | _VALUES),
    st.tuples(st.just("swap"), st.integers(0, 5), st.integers(0, 5)),
    st.tuples(st.just("drop"), st.integers(0, 5)),
    st.tuples(st.just("dims"), st.integers(0, 8), st.lists(st.integers(-1, 10**6), max_size=4)),
    st.tuples(st.just("raw"), st.integers(0, 8), st.binary(max_size=64)),
)


def _mutate(model: onnx.ModelProto, mutation: tuple) -> None:
    kind, nodes, inits = mutation[0], model.graph.node, model.graph.initializer
    if kind in ("op", "input", "output", "attribute", "drop") and mutation[1] >= len(nodes):
        return
    if kind == "op":
        nodes[mutation[1]].op_type = mutation[2]
    elif kind == "input":
        node = nodes[mutation[1]]
        if mutation[2] < len(node.input):
            node.input[mutation[2]] = mutation[3]
        else:
            node.input.append(mutation[3])
    elif kind == "output":
        nodes[mutation[1]].output[0] = mutation[2]
    elif kind == "attribute":
        node = nodes[mutation[1]]
        kept = [a for a in node.attribute if a.name != mutation[2]]
        del node.attribute[:]
        node.attribute.extend(kept + ([helper.make_attribute(mutation[2], mutation[3])] if mutation[3] is not None
                                      and mutation[3] != [] else []))
    elif kind == "swap" and max(mutation[1:]) < len(nodes):
        first, second = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(nodes[mutation[1]])
        second.CopyFrom(nodes[mutation[2]])
        nodes[mutation[1]].CopyFrom(second)
        nodes[mutation[2]].CopyFrom(first)
    elif kind == "drop":
        del nodes[mutation[1]]
    elif kind == "dims" and mutation[1] < len(inits):
        del inits[mutation[1]].dims[:]
        inits[mutation[1]].dims.extend(mutation[2])
    elif kind == "raw" and mutation[1] < len(inits):
        inits[mutation[1]].raw_data = mutation[2]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=3), flips=st.lists(st.tuples(st.integers(0, 10**5),
                                                                                      st.integers(0, 255)), max_size=2))
def test_fuzzed_graphs_give_an_embedder_or_one_error_line(mutations, flips):
    model = _model()
    for mutation in mutations:
        _mutate(model, mutation)
    data = bytearray(model.SerializeToString())
    for position, value in flips:
        data[position % len(data)] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.onnx"
        path.write_bytes(bytes(data))
        try:
            embedder = load_onnx_embedder(path)
        except ExFaceGANError as error:
            assert "\n" not in str(error) and str(path) in str(error), str(error)
            event("refused")
            return
    event("loaded and ran")
    embeddings = embedder(_faces(2))
    assert embeddings.shape == (2, embedder.embedding_dim) and embeddings.dtype == torch.float32


def test_every_attribute_the_table_admits_is_a_keyword_of_its_op():
    import inspect

    from exfacegan.embedders.onnx_ops import ATTRIBUTES, INPUTS, OPS

    assert set(INPUTS) == {*OPS, "Constant"} and set(ATTRIBUTES) - {"Constant"} <= set(OPS)
    for op, kinds in ATTRIBUTES.items():
        if op == "Constant":
            continue
        parameters = inspect.signature(OPS[op]).parameters.values()
        names = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
        assert set(kinds) <= names or any(p.kind is p.VAR_KEYWORD for p in parameters), op
