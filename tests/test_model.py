"""Model loading: every source, every bad file, validation."""
from __future__ import annotations

import os
import pickle

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgebench as eb
from edgebench.errors import EdgebenchError, ModelLoadError

from ._models import mlp_proto


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "tiny.onnx"
    onnx.save(mlp_proto(), p)
    return p


def test_load_path_bytes_proto_agree(onnx_file):
    a = eb.load(onnx_file)
    b = eb.load(onnx_file.read_bytes())
    c = eb.load(mlp_proto())
    assert a.sha256 == b.sha256 == c.sha256
    assert a.name == "tiny_mlp"
    assert a.size_bytes == len(onnx_file.read_bytes())
    assert eb.load(a) is a


def test_signature_and_dynamic_dims(onnx_file):
    m = eb.load(onnx_file)
    assert [s.name for s in m.inputs] == ["x"] and [s.name for s in m.outputs] == ["y"]
    (x,) = m.inputs
    assert x.dtype == "float32" and x.shape == ("batch", 16) and x.is_dynamic
    fixed = eb.load(mlp_proto(batch=2))
    assert fixed.inputs[0].shape == (2, 16) and not fixed.inputs[0].is_dynamic
    unnamed = mlp_proto()
    unnamed.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    assert eb.load(unnamed).inputs[0].shape == (None, 16)


def test_initializers_are_not_inputs():
    proto = mlp_proto()
    proto.graph.input.extend([helper.make_tensor_value_info("w1", TensorProto.FLOAT, [16, 32])])
    proto.ir_version = 8
    assert [s.name for s in eb.load(proto).inputs] == ["x"]


def test_save_roundtrip(tmp_path, onnx_file):
    m = eb.load(onnx_file)
    out = m.save(tmp_path / "sub" / "copy.onnx")
    assert eb.load(out).sha256 == m.sha256


def test_repr_is_cheap_and_informative(onnx_file):
    m = eb.load(onnx_file)
    r = repr(m)
    assert "tiny_mlp" in r and "x: float32[batch,16]" in r and m.sha256[:12] in r
    html = m._repr_html_()
    assert "<table>" in html and "Gemm" in html


def test_external_data(tmp_path):
    proto = mlp_proto(n_in=64, n_hidden=64)
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").exists()
    m = eb.load(path)
    assert m.n_params == 64 * 64 + 64 + 64 * 4 + 4
    from onnx import numpy_helper
    inlined = {t.name: numpy_helper.to_array(t) for t in m.proto.graph.initializer}
    assert not any(t.external_data for t in m.proto.graph.initializer)
    assert np.array_equal(inlined["w1"], numpy_helper.to_array(mlp_proto(n_in=64, n_hidden=64).graph.initializer[0]))
    with pytest.raises(ModelLoadError, match="external data.*bytes"):
        eb.load(path.read_bytes())
    os.remove(tmp_path / "ext.data")
    with pytest.raises(ModelLoadError, match="external data"):
        eb.load(path)


# ---------------------------------------------------------------------------------- bad files
def _bad(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case,pattern", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("empty", "empty"),
    ("truncated", "not an ONNX model|not a valid ONNX"),
    ("random", "not an ONNX model|not a valid ONNX"),
    ("text", "not an ONNX model"),
    ("not_a_graph", "not an ONNX model|not a valid ONNX"),
    ("future_opset", "opset 999"),
    ("pickle", "pickle"),
])
def test_bad_files(tmp_path, case, pattern):
    good = mlp_proto().SerializeToString()
    if case == "missing":
        p = tmp_path / "nope.onnx"
    elif case == "directory":
        p = tmp_path / "d"
        p.mkdir()
        onnx.save(mlp_proto(), p / "inside.onnx")
    elif case == "empty":
        p = _bad(tmp_path, "e.onnx", b"")
    elif case == "truncated":
        p = _bad(tmp_path, "t.onnx", good[: len(good) // 2])
    elif case == "random":
        p = _bad(tmp_path, "r.onnx", np.random.default_rng(1).bytes(4096))
    elif case == "text":
        p = _bad(tmp_path, "t.onnx", b"this is not a model, just some notes\n" * 20)
    elif case == "not_a_graph":
        # a valid protobuf of another message type
        p = _bad(tmp_path, "g.onnx", helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString())
    elif case == "future_opset":
        p = _bad(tmp_path, "f.onnx", mlp_proto(opset=999).SerializeToString())
    elif case == "pickle":
        p = _bad(tmp_path, "m.pkl", pickle.dumps({"a": 1}))
    with pytest.raises(ModelLoadError, match=pattern) as info:
        eb.load(p)
    assert isinstance(info.value, EdgebenchError)
    assert "Traceback" not in str(info.value)
    if case == "directory":
        assert "inside.onnx" in str(info.value)


def test_truncated_at_every_length_never_crashes(tmp_path):
    good = mlp_proto(n_in=4, n_hidden=4, n_out=2).SerializeToString()
    for cut in range(0, len(good), max(1, len(good) // 60)):
        try:
            m = eb.load(good[:cut])
        except ModelLoadError:
            continue
        # a prefix that happens to parse must still be a complete, valid model
        assert m.inputs and m.outputs


def test_invalid_graph_refused():
    proto = mlp_proto()
    proto.graph.node[1].input[0] = "does_not_exist"
    with pytest.raises(ModelLoadError, match="not a valid ONNX graph|does_not_exist"):
        eb.load(proto)


def test_unknown_operator_named():
    proto = mlp_proto()
    proto.graph.node[1].op_type = "FrobnicateRelu"
    proto.graph.node[1].domain = "com.example"
    proto.opset_import.extend([helper.make_opsetid("com.example", 1)])
    with pytest.raises(ModelLoadError, match="com.example::FrobnicateRelu"):
        eb.load(proto)


def test_type_mismatch_refused_by_inference():
    proto = mlp_proto()
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(ModelLoadError):
        eb.load(proto)


def test_wrong_type_of_object():
    with pytest.raises(ModelLoadError, match="cannot load a model from a int"):
        eb.load(42)


# ------------------------------------------------------------------------------------ torch


def _torch():
    return pytest.importorskip("torch")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/edgebench-pwned",))


@pytest.mark.torch
def test_torch_module_export_and_signature():
    torch = _torch()
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    m = eb.load(net, example_inputs=(torch.zeros(1, 8),), name="net")
    assert m.name == "net" and m.source.startswith("torch:")
    assert m.inputs[0].shape == ("batch", 8) and m.outputs[0].shape[1] == 3
    assert m.torch_module is net
    fixed = eb.load(net, example_inputs=torch.zeros(2, 8), dynamic_axes=False)
    assert fixed.inputs[0].shape == (2, 8)
    with pytest.raises(ModelLoadError, match="example inputs"):
        eb.load(net)
    with pytest.raises(ModelLoadError, match="fails on the example inputs"):
        eb.load(net, example_inputs=(torch.zeros(1, 5),))


@pytest.mark.torch
def test_pickle_files_never_unpickled(tmp_path):
    torch = _torch()
    marker = "/tmp/edgebench-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Exploit()}, evil)
    with pytest.raises(ModelLoadError, match="refusing|weights-only"):
        eb.load(evil)
    assert not os.path.exists(marker)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ModelLoadError):
        eb.load(raw)
    assert not os.path.exists(marker)


@pytest.mark.torch
def test_state_dict_and_torchscript_files(tmp_path):
    torch = _torch()
    net = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    sd = tmp_path / "weights.pt"
    torch.save(net.state_dict(), sd)
    with pytest.raises(ModelLoadError, match="state dict"):
        eb.load(sd)
    ts = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 8)), ts)
    with pytest.raises(ModelLoadError, match="example inputs"):
        eb.load(ts)
    m = eb.load(ts, example_inputs=(torch.zeros(1, 8),))
    assert m.inputs[0].shape[1] == 8
