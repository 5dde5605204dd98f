"""The ``torch`` backend: runs the original nn.Module behind a Model."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgebench.backends as backends  # noqa: E402
from edgebench import devices as dv  # noqa: E402
from edgebench.errors import BackendUnavailableError, ConfigError, DeviceUnavailableError  # noqa: E402
from edgebench.model import load  # noqa: E402

pytestmark = pytest.mark.torch


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 6)
        self.norm = torch.nn.BatchNorm1d(6)
        self.a = torch.nn.Linear(6, 3)
        self.b = torch.nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.norm(self.body(x)))
        return self.a(h), torch.softmax(self.b(h), dim=-1)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return module, load(module, example_inputs=(torch.randn(2, 4),))


@pytest.fixture(scope="module")
def backend():
    return backends.get("torch")


def _ref(module, x):
    with torch.inference_mode():
        out = module(torch.from_numpy(x))
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


def _x(n=5, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_registered_and_listed(backend):
    from edgebench.backends.torch import TorchBackend

    assert isinstance(backend, TorchBackend)
    assert isinstance(backend, backends.Backend)
    assert "torch" in backends.names()
    assert backend.available() == (True, None)
    assert backend.version() == torch.__version__
    rows = {r.name: r for r in backends.backends()}
    row = rows["torch"]
    assert row.available and row.version == torch.__version__ and row.reason is None
    assert "cpu" in row.devices
    assert row.details["threads"] == torch.get_num_threads()
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    assert backend.devices() == ["cpu", *cuda]


def test_runs_the_module_and_matches_it(mlp, backend):
    module, model = mlp
    session = backend.compile(model, "cpu")
    assert isinstance(session, backends.Session)
    assert session.input_names == ["input"] and session.output_names == ["output"]
    for n in (1, 5, 17):  # the batch dim is dynamic
        x = _x(n)
        (y,) = session.run({"input": x})
        assert isinstance(y, np.ndarray) and y.shape == (n, 2) and y.dtype == np.float32
        np.testing.assert_allclose(y, _ref(module, x)[0], rtol=1e-6, atol=1e-6)


def test_agrees_with_onnxruntime(mlp, backend):
    _, model = mlp
    ort = backends.get("onnxruntime")
    if not ort.available()[0]:
        pytest.skip(ort.available()[1])
    x = _x(7)
    (a,) = backend.compile(model, "cpu").run({"input": x})
    (b,) = ort.compile(model, "cpu").run({"input": x})
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tuple_outputs_and_buffers(backend):
    torch.manual_seed(1)
    module = TwoHeads()
    module.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        module(torch.randn(16, 4) * 3 + 1)
    module.eval()
    model = load(module, example_inputs=(torch.randn(2, 4),), output_names=["logits", "probs"])
    session = backend.compile(model, "cpu")
    assert session.output_names == ["logits", "probs"]
    x = _x(6)
    outs = session.run({"input": x})
    ref = _ref(module, x)
    assert len(outs) == 2
    for got, want in zip(outs, ref):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs[1].sum(axis=1), 1.0, rtol=1e-5)
    expected = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    assert session.memory_bytes() == expected
    # BatchNorm's buffers (running stats, an int64 counter) are counted, not just parameters
    assert expected > sum(p.numel() * p.element_size() for p in module.parameters())


def test_memory_bytes_of_the_mlp(mlp, backend):
    _, model = mlp
    assert backend.compile(model, "cpu").memory_bytes() == (4 * 3 + 3 + 3 * 2 + 2) * 4


def test_odd_feeds_readonly_and_strided(mlp, backend):
    module, model = mlp
    session = backend.compile(model, "cpu")
    x = _x(6)
    ro = x.copy()
    ro.flags.writeable = False
    strided = np.ascontiguousarray(x[::-1])[::-1]  # negative strides
    fortran = np.asfortranarray(x)
    want = _ref(module, x)[0]
    for feed in (ro, strided, fortran):
        np.testing.assert_allclose(session.run({"input": feed})[0], want, rtol=1e-6, atol=1e-6)


def test_onnx_only_model_is_refused(backend):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = load(proto.SerializeToString())
    assert model.torch_module is None
    with pytest.raises(BackendUnavailableError) as e:
        backend.compile(model, "cpu")
    msg = str(e.value)
    assert "loaded from ONNX" in msg and "onnxruntime" in msg


def test_absent_cuda_raises_device_unavailable(mlp, backend):
    _, model = mlp
    try:
        dv.resolve("cuda")
    except DeviceUnavailableError as err:
        reason = str(err)
    else:
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailableError) as e:
        backend.compile(model, "cuda")
    assert str(e.value) == reason


def test_non_torch_device_is_refused(mlp, backend):
    _, model = mlp
    with pytest.raises(BackendUnavailableError):  # absent here, or present but not a torch device
        backend.compile(model, "npu:openvino")
    with pytest.raises(ConfigError):
        backend.compile(model, "tpu:0")


def test_threads_option(mlp, backend):
    _, model = mlp
    before = torch.get_num_threads()
    try:
        backend.compile(model, "cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="threads"):
            backend.compile(model, "cpu", threads=bad)


def test_unknown_option_is_an_error(mlp, backend):
    _, model = mlp
    with pytest.raises(ConfigError, match="graph_optimization_level"):
        backend.compile(model, "cpu", graph_optimization_level=99)


def test_user_module_is_not_copied_on_cpu(mlp, backend):
    module, model = mlp
    session = backend.compile(model, "cpu")
    assert session.module is module  # no copy of the weights when they are already on the device


def test_profiling_returns_op_events(mlp, backend):
    module, model = mlp
    session = backend.compile(model, "cpu")
    assert session.end_profiling() == []  # not started
    session.start_profiling()
    session.run({"input": _x(3)})
    worker = threading.Thread(target=session.run, args=({"input": _x(4)},))
    worker.start()
    worker.join()
    with torch.inference_mode():
        module(torch.zeros(2, 4) + 1)  # outside this session: must not be reported
    events = session.end_profiling()
    names = {e["name"] for e in events}
    assert "aten::addmm" in names or "aten::linear" in names
    assert "aten::relu" in names
    assert "aten::add" not in names  # the `+ 1` ran outside the session
    for e in events:
        assert e["ph"] == "X" and e["cat"] == "op"
        assert e["dur"] >= 0 and e["ts"] >= 0
        assert e["args"]["op_type"] == e["name"].split("::")[-1]
        assert not e["name"].startswith("edgebench::")
    # both runs are there, the second one from another thread
    assert len({e["tid"] for e in events}) == 2
    assert sum(e["name"] == "aten::relu" for e in events) == 2
    assert session.end_profiling() == []


def test_compile_with_a_cheap_dynamo_backend(mlp, backend):
    module, model = mlp
    session = backend.compile(model, "cpu", compile=True, compile_options={"backend": "eager"})
    assert session._fn is not session.module
    x = _x(5)
    np.testing.assert_allclose(session.run({"input": x})[0], _ref(module, x)[0], rtol=1e-6, atol=1e-6)


def test_compile_failure_is_backend_unavailable(mlp, backend):
    _, model = mlp
    with pytest.raises(BackendUnavailableError, match="torch.compile failed"):
        backend.compile(model, "cpu", compile=True, compile_options={"backend": "no-such-dynamo-backend"})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compile_with_inductor(mlp, backend):
    module, model = mlp
    session = backend.compile(model, "cpu", compile=True)
    x = _x(4)
    np.testing.assert_allclose(session.run({"input": x})[0], _ref(module, x)[0], rtol=1e-5, atol=1e-5)
