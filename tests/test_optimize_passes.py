"""Optimization passes: configs, candidates, the search space, and each handler on real models."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgebench as eb
from edgebench.errors import ConfigError, OptimizeError
from edgebench.optimize.base import (Candidate, PassContext, SearchSpace, Trial, config_class,
                                     handler_for)
from edgebench.optimize.mixed import MixedPrecisionConfig
from edgebench.optimize.quantize import QuantizeConfig, quantized_nodes

from ._models import mlp_proto


def _run(model, x):
    eng = eb.Engine(model, threads=1, record=False)
    return next(iter(eng.run(x).values()))


def _cos(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture(scope="module")
def tiny():
    return eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4))


@pytest.fixture(scope="module")
def tiny_ctx(tiny, tmp_path_factory):
    X = np.random.default_rng(1).standard_normal((48, 16)).astype(np.float32)
    return PassContext(tiny, {"x": X}, threads=1, work_dir=tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def digits(zoo_cache):
    return eb.zoo.load("digits")


@pytest.fixture(scope="module")
def digits_ctx(digits, tmp_path_factory):
    X, _ = eb.zoo.dataset("digits", "calibration")
    return PassContext(digits, {"input": X}, threads=1, work_dir=tmp_path_factory.mktemp("dwork"))


# --------------------------------------------------------------------------------------------
# configs and candidates
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: eb.QuantizeConfig(mode="int4"),
    lambda: eb.QuantizeConfig(types="s8u8"),
    lambda: eb.QuantizeConfig(mode="dynamic", types="s8s8"),
    lambda: eb.QuantizeConfig(mode="dynamic", calibration="entropy"),
    lambda: eb.QuantizeConfig(calibration_samples=0),
    lambda: eb.SessionConfig(threads=0),
    lambda: eb.SessionConfig(execution_mode="fast"),
    lambda: eb.SessionConfig(inter_op_threads=2),
    lambda: eb.GraphOptConfig(level="max"),
    lambda: eb.GraphOptConfig(offline=False, slim=False),
    lambda: eb.PruneConfig(sparsity=1.5),
    lambda: eb.PruneConfig(method="random"),
    lambda: eb.MixedPrecisionConfig(keep_fp32=-1),
    lambda: eb.MixedPrecisionConfig(QuantizeConfig(nodes_to_exclude=("a",))),
    lambda: Candidate((eb.QuantizeConfig(), eb.Float16Config())),  # two precision configs
    lambda: Candidate(("not a config",)),
])
def test_invalid_configs_raise_config_error(make):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value)


def test_candidate_keys_are_stable_and_round_trip():
    c = Candidate.of(eb.SessionConfig(io_binding=True), eb.QuantizeConfig(per_channel=True, calibration="entropy"),
                     eb.PruneConfig(sparsity=0.25))
    assert [type(x).__name__ for x in c.configs] == ["PruneConfig", "QuantizeConfig", "SessionConfig"]
    assert c.key() == ('[["PruneConfig",{"sparsity":0.25}],["QuantizeConfig",{"calibration":"entropy",'
                       '"per_channel":true}],["SessionConfig",{"io_binding":true}]]')
    assert Candidate.from_key(c.key()) == c and hash(Candidate.from_key(c.key())) == hash(c)
    assert c.describe() == "prune(channel, 25%) -> quantize(static, qdq, u8s8, entropy, per_channel) -> session(iobinding)"
    assert Candidate().is_baseline and Candidate().describe() == "fp32 baseline"
    m = Candidate.of(eb.MixedPrecisionConfig(QuantizeConfig(types="s8s8"), keep_fp32=2))
    assert Candidate.from_key(m.key()) == m
    assert m.params()["MixedPrecisionConfig.quantize.types"] == "s8s8"
    with pytest.raises(ConfigError):
        Candidate.from_key("not json")


def test_from_params_normalises_irrelevant_fields():
    q = QuantizeConfig.from_params({"mode": "dynamic", "format": "qoperator", "types": "s8s8",
                                    "calibration": "entropy", "per_channel": True})
    assert q == QuantizeConfig(mode="dynamic", per_channel=True)
    s = eb.SessionConfig.from_params({"execution_mode": "sequential", "inter_op_threads": 2})
    assert s == eb.SessionConfig() and s.is_noop()


def test_trial_round_trips_through_dict():
    c = Candidate.of(eb.QuantizeConfig(mode="dynamic"))
    t = Trial(c, status="rejected", reason="too slow", p50_ms=1.5, latency_ratio=0.8, fidelity={"cosine": 0.9})
    back = Trial.from_dict(t.to_dict())
    assert back.candidate == c and back.status == "rejected" and back.p50_ms == 1.5 and back.fidelity == t.fidelity
    with pytest.raises(ConfigError):
        Trial(c, status="maybe")


def test_search_space_spans_valid_distinct_candidates(tiny, tiny_ctx):
    space = SearchSpace.from_context(tiny_ctx)
    assert "QuantizeConfig" in space.families and "SessionConfig" in space.families
    assert space.families["SessionConfig"]["threads"] == [None]  # threads=1 asked for: not a choice
    assert "PruneConfig" not in space.families  # no torch module: channel pruning does not apply
    cands = list(space.enumerate())
    keys = [c.key() for c in cands]
    assert cands[0].is_baseline and len(set(keys)) == len(keys) == space.size()
    assert all(len({x.group for x in c.configs}) == len(c.configs) for c in cands)
    assert not any(isinstance(x, eb.SessionConfig) and x.is_noop() for c in cands for x in c.configs)
    built = space.build({"QuantizeConfig": {"mode": "dynamic", "types": "s8s8"}, "SessionConfig": None})
    assert built == Candidate.of(QuantizeConfig(mode="dynamic"))
    assert config_class("Float16Config") is eb.Float16Config


# --------------------------------------------------------------------------------------------
# handlers
# --------------------------------------------------------------------------------------------
def test_dynamic_quantization_rewrites_gemm_and_stays_close(tiny, tiny_ctx):
    out = handler_for(QuantizeConfig(mode="dynamic"))(tiny, QuantizeConfig(mode="dynamic"), tiny_ctx)
    ops = out.model.op_counts
    assert "MatMulInteger" in ops and "Gemm" not in ops
    assert any("Gemm nodes rewritten" in n for n in out.notes)
    x = tiny_ctx.calibration["x"][:8]
    assert _cos(_run(tiny, x), _run(out.model, x)) > 0.99


@pytest.mark.parametrize("cfg", [QuantizeConfig(), QuantizeConfig(format="qoperator", types="s8s8", per_channel=True),
                                 QuantizeConfig(calibration="entropy")])
def test_static_quantization_is_int8_and_close(tiny, tiny_ctx, cfg):
    out = handler_for(cfg)(tiny, cfg, tiny_ctx)
    assert len(quantized_nodes(out.model)) == 2  # both Gemms
    assert out.model.size_bytes < tiny.size_bytes
    x = tiny_ctx.calibration["x"][:8]
    assert _cos(_run(tiny, x), _run(out.model, x)) > 0.98


def test_static_quantization_needs_calibration(tiny, tmp_path):
    ctx = PassContext(tiny, None, work_dir=tmp_path)
    with pytest.raises(OptimizeError, match="calibration"):
        handler_for(QuantizeConfig())(tiny, QuantizeConfig(), ctx)


def test_graph_optimization_saves_an_equivalent_smaller_graph(tiny, tiny_ctx):
    cfg = eb.GraphOptConfig(slim=True)
    out = handler_for(cfg)(tiny, cfg, tiny_ctx)
    assert sum(out.model.op_counts.values()) < sum(tiny.op_counts.values())  # Gemm+Relu fused
    x = tiny_ctx.calibration["x"]
    np.testing.assert_allclose(_run(out.model, x), _run(tiny, x), rtol=1e-5, atol=1e-5)
    assert any("onnxslim" in n for n in out.notes)


def test_session_config_only_asks_for_engine_options(tiny, tiny_ctx):
    cfg = eb.SessionConfig(execution_mode="parallel", inter_op_threads=2, io_binding=True, mem_pattern=False)
    out = handler_for(cfg)(tiny, cfg, tiny_ctx)
    assert out.model is tiny
    assert out.session == {"options": {"execution_mode": "parallel", "inter_op_threads": 2,
                                       "enable_mem_pattern": False, "io_binding": True}}
    eng = eb.Engine(tiny, threads=1, options=out.session["options"])
    assert eng.run(tiny_ctx.calibration["x"][:1])["y"].shape == (1, 4)
    with pytest.raises(ConfigError, match="contradicts"):
        handler_for(cfg)(tiny, eb.SessionConfig(threads=2), tiny_ctx)


def test_float16_keeps_float32_io(tiny, tiny_ctx):
    out = handler_for(eb.Float16Config())(tiny, eb.Float16Config(), tiny_ctx)
    assert out.model.inputs[0].dtype == "float32" and out.model.outputs[0].dtype == "float32"
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in out.model.proto.graph.initializer)
    x = tiny_ctx.calibration["x"][:8]
    assert _cos(_run(tiny, x), _run(out.model, x)) > 0.999
    assert any("float16 on the CPU" in n for n in out.notes)


def test_magnitude_pruning_of_onnx_initializers_is_size_only(tiny, tiny_ctx):
    cfg = eb.PruneConfig(method="magnitude", sparsity=0.5)
    out = handler_for(cfg)(tiny, cfg, tiny_ctx)
    w = {t.name: onnx.numpy_helper.to_array(t) for t in out.model.proto.graph.initializer}
    assert abs((w["w1"] == 0).mean() - 0.5) < 0.02 and (w["b1"] != 0).all()  # biases untouched
    assert "size-only" in out.notes[0]
    with pytest.raises(OptimizeError, match="PyTorch module"):
        handler_for(eb.PruneConfig())(tiny, eb.PruneConfig(), tiny_ctx)


@pytest.mark.torch
def test_channel_pruning_shrinks_the_torch_model(digits, digits_ctx):
    calls = []
    cfg = eb.PruneConfig(sparsity=0.5, fine_tune=lambda m: calls.append(type(m).__name__))
    out = handler_for(cfg)(digits, cfg, digits_ctx)
    assert calls == ["Sequential"]
    assert out.model.n_params < digits.n_params / 2
    assert out.model.inputs == digits.inputs and out.model.outputs == digits.outputs
    X, y = eb.zoo.dataset("digits", "test")
    acc = float((_run(out.model, X).argmax(1) == y).mean())
    assert 0.5 < acc <= 1.0  # real predictions, not a broken graph
    assert digits.torch_module[0].out_channels == 16  # the original module is untouched


@pytest.mark.torch
def test_quantized_digits_keeps_accuracy(digits, digits_ctx):
    X, y = eb.zoo.dataset("digits", "test")
    base = float((_run(digits, X).argmax(1) == y).mean())
    out = handler_for(QuantizeConfig(per_channel=True))(digits, QuantizeConfig(per_channel=True), digits_ctx)
    assert len(quantized_nodes(out.model)) == 4
    assert float((_run(out.model, X).argmax(1) == y).mean()) >= base - 0.02


@pytest.mark.torch
def test_mixed_precision_keeps_the_most_sensitive_nodes_fp32(digits, digits_ctx):
    cfg = MixedPrecisionConfig(keep_fp32=1)
    out = handler_for(cfg)(digits, cfg, digits_ctx)
    ranked = [n for n in out.notes if n.startswith("sensitivity")][0]
    first = ranked.split(": ", 1)[1].split(" ")[0]
    assert len(quantized_nodes(out.model)) == 3
    assert out.notes[-1] == f"float32 nodes: {first}"
    # the budget check decides how many stay fp32: never passing keeps all, always passing none
    checks = []
    never = PassContext(digits, digits_ctx.calibration, work_dir=digits_ctx.work_dir,
                        fidelity_check=lambda m, ref: (checks.append(ref), (False, "no"))[1])
    with pytest.raises(OptimizeError, match="no compute node can be int8"):
        handler_for(MixedPrecisionConfig())(digits, MixedPrecisionConfig(), never)
    always = PassContext(digits, digits_ctx.calibration, work_dir=digits_ctx.work_dir,
                         fidelity_check=lambda m, ref: (True, "fine"))
    out = handler_for(MixedPrecisionConfig(sensitivity="sqnr"))(digits, MixedPrecisionConfig(sensitivity="sqnr"), always)
    assert len(quantized_nodes(out.model)) == 4 and any("already holds" in n for n in out.notes)
    assert 1 < len(checks) <= 4  # all-int8 first, then a binary search over 4 nodes
    assert all(ref is digits for ref in checks)  # fidelity to the pass's own input
