"""``%load_ext edgebench``: the magics, driven in a real IPython InteractiveShell on real engines."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("IPython")

from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

import edgebench as eb
from edgebench.profile.profiler import ProfileSession

from ._models import mlp_proto


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython()
    shell.run_line_magic("load_ext", "edgebench")
    active = shell.display_formatter.active_types
    shell.display_formatter.active_types = list(shell.display_formatter.format_types)  # as in Jupyter
    shell.user_ns["eb"] = eb
    yield shell
    shell.display_formatter.active_types = active
    for name in [n for n, v in shell.user_ns.items() if isinstance(v, eb.Engine)]:
        shell.user_ns[name].close()
        del shell.user_ns[name]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("magic-model") / "tiny.onnx"
    onnx.save(mlp_proto(), str(path))
    return path


def run(ip, source: str):
    """Run a cell; return (result, stdout, stderr, rich outputs)."""
    with capture_output() as cap:
        result = ip.run_cell(source, store_history=False)
    return result, cap.stdout, cap.stderr, cap.outputs


def assert_one_line_usage_error(ip, source: str, *needles: str) -> None:
    result, out, err, _outputs = run(ip, source)
    assert not result.success, source
    lines = err.strip().splitlines()
    assert len(lines) == 1, (source, err)
    assert lines[0].startswith("UsageError: "), (source, err)
    assert "Traceback" not in err + out, (source, err, out)
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, source, err)


# --------------------------------------------------------------------------------------------
# registration, help, info
# --------------------------------------------------------------------------------------------
def test_extension_registers_line_and_cell_magic(ip):
    magics = ip.magics_manager.magics
    assert "edgebench" in magics["line"] and "edgebench" in magics["cell"]


def test_help_lists_subcommands(ip):
    result, out, err, _ = run(ip, "%edgebench --help")
    assert result.success, err
    for sub in ("info", "bench", "profile"):
        assert sub in out
    result, out, err, _ = run(ip, "%edgebench bench --help")
    assert result.success and "--latency-bound-ms" in out and "--scenario" in out


def test_info_text_and_json(ip):
    result, out, err, _ = run(ip, "%edgebench info")
    assert result.success, err
    assert "Devices" in out and "Backends" in out and "onnxruntime" in out
    result, out, err, _ = run(ip, "%edgebench info --json")
    info = json.loads(out)
    assert info["versions"]["edgebench"] == eb.__version__
    assert any(d["name"] == "cpu" and d["available"] for d in info["devices"])


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------
def test_bench_json_uses_the_cli_options(ip, onnx_file):
    result, out, err, outputs = run(
        ip, f"%edgebench bench {onnx_file} --scenario offline --duration 0.3 --batch-size 2 --threads 1 --json")
    assert result.success, err
    s = json.loads(out)
    assert s["scenario"] == "offline" and s["model"] == "tiny_mlp" and s["threads"] == 1
    assert s["settings"]["batch_size"] == 2 and s["queries"] > 0
    assert s["samples"] == 2 * s["queries"]
    assert outputs == []  # --json: text only, no views


def test_bench_shows_engine_then_report(ip, onnx_file):
    result, _out, err, outputs = run(ip, f"%edgebench bench {onnx_file} --duration 0.3 --threads 1")
    assert result.success, err
    plain = [o.data.get("text/plain", "") for o in outputs]
    assert len(outputs) >= 2, plain
    assert "tiny_mlp" in plain[0] and "onnxruntime" in plain[0]                  # the engine's view
    assert any("BenchmarkReport" in p and "single_stream" in p for p in plain[1:]), plain
    assert any("text/html" in o.data or "application/vnd.jupyter.widget-view+json" in o.data
               for o in outputs[1:])
    assert "Traceback" not in err


def test_bench_server_scenario_runs_with_qps_and_bound(ip, onnx_file):
    result, out, err, _ = run(ip, f"%edgebench bench {onnx_file} --scenario server --qps 200 "
                                  "--latency-bound-ms 50 --duration 0.3 --threads 1 --json")
    assert result.success, err
    s = json.loads(out)
    assert s["scenario"] == "server" and s["settings"]["qps"] == 200


# --------------------------------------------------------------------------------------------
# bad arguments: one line, no traceback
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, needles", [
    ("%edgebench", ["required"]),
    ("%edgebench bogus", ["invalid choice", "bogus"]),
    ("%edgebench bench", ["MODEL"]),
    ("%edgebench bench zoo:mlp --duration -1", ["--duration", "positive"]),
    ("%edgebench bench zoo:mlp --scenario fast", ["--scenario"]),
    ("%edgebench bench zoo:mlp --batch-size 0", ["--batch-size"]),
    ("%edgebench bench zoo:no-such-model --duration 0.1", ["no-such-model"]),
    ("%edgebench bench /no/such/model.onnx --duration 0.1", ["no such model file"]),
    ("%edgebench bench zoo:mlp --scenario server --duration 0.1", ["--qps"]),
    ("%edgebench bench zoo:mlp --scenario server --qps 5 --duration 0.1", ["--latency-bound-ms"]),
    ("%edgebench bench zoo:mlp --backend nope --duration 0.1", ["nope"]),
    ('%edgebench bench "zoo:mlp', ["cannot parse"]),
    ("%edgebench info --bogus", ["unrecognized", "--bogus"]),
    ("%edgebench profile", ["cell magic"]),
    ("%%edgebench info\nx = 1\n", ["line magic"]),
    ("%%edgebench profile no_such_variable\nx = 1\n", ["no_such_variable"]),
    ("%%edgebench profile some_int\nx = 1\n", ["not an edgebench engine"]),
    ("%%edgebench profile --bogus\nx = 1\n", ["--bogus"]),
])
def test_bad_arguments_give_one_line(ip, source, needles):
    ip.user_ns["some_int"] = 3
    assert_one_line_usage_error(ip, source, *needles)


def test_bad_model_file_gives_one_line(ip, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    assert_one_line_usage_error(ip, f"%edgebench bench {bad} --duration 0.1")


# --------------------------------------------------------------------------------------------
# %%edgebench profile
# --------------------------------------------------------------------------------------------
@pytest.fixture
def engines(ip):
    a = eb.Engine(mlp_proto(), threads=1)
    b = eb.Engine(mlp_proto(n_in=8, seed=1), threads=1)
    ip.user_ns.update(eng_a=a, eng_b=b, xa=np.ones((1, 16), np.float32), xb=np.ones((2, 8), np.float32))
    yield a, b
    for name in ("eng_a", "eng_b", "prof", "made_here"):
        obj = ip.user_ns.pop(name, None)
        if isinstance(obj, eb.Engine):
            obj.close()
    a.close()
    b.close()


def test_profile_cell_profiles_the_engines_that_ran(ip, engines):
    a, b = engines
    before_b = b.records.total
    result, _out, err, outputs = run(ip, "%%edgebench profile -o prof\nfor _ in range(15):\n    eng_a.run(xa)\n")
    assert result.success, err
    prof = ip.user_ns["prof"]
    assert isinstance(prof, ProfileSession) and prof.engine is a and not prof.active
    assert int(prof.summary()["count"]) == 15
    ops = prof.operators()
    assert "fc2" in set(ops["op"]) and set(ops["type"]) <= {"Gemm", "FusedGemm", "Relu"}
    assert (ops["calls"] == 15).all()
    assert b.records.total == before_b           # b was profiled too, but served nothing: not shown
    shown = [o.data.get("text/plain", "") for o in outputs]
    assert len(shown) == 1 and "ProfileSession" in shown[0] and "15 requests" in shown[0], shown
    # profiling ended: the engines run normally and can be profiled again
    assert a.session._profiling is None and b.session._profiling is None
    with eb.profile(a) as again:
        a.run(ip.user_ns["xa"])
    assert len(again.operators()) == len(ops)


def test_profile_cell_several_engines_and_the_cell_value(ip, engines):
    a, b = engines
    result, out, err, outputs = run(
        ip, "%%edgebench profile -o prof\nfor _ in range(3):\n    eng_a.run(xa)\n    eng_b.run(xb)\n'done'\n")
    assert result.success, err
    profs = ip.user_ns["prof"]
    assert isinstance(profs, list) and {id(p.engine) for p in profs} == {id(a), id(b)}
    assert sorted(int(p.summary()["count"]) for p in profs) == [3, 3]
    plain = [o.data.get("text/plain", "") for o in outputs]
    assert "'done'" in plain or "'done'" in out   # the cell's own value is still shown
    assert sum("ProfileSession" in p for p in plain) == 2


def test_profile_cell_named_engine_only(ip, engines):
    _a, b = engines
    result, _out, err, _outputs = run(
        ip, "%%edgebench profile eng_b --no-operators -o prof\neng_a.run(xa)\neng_b.run(xb)\n")
    assert result.success, err
    prof = ip.user_ns["prof"]
    assert prof.engine is b and int(prof.summary()["count"]) == 1
    assert prof.operators().empty and "off" in prof.operators().attrs["reason"]


def test_profile_cell_reports_engines_made_inside_and_idle_cells(ip, engines):
    result, out, err, _ = run(ip, "%%edgebench profile\nmade_here = eb.Engine(eng_a.model, threads=1)\n"
                                  "made_here.run(xa)\n")
    assert result.success, err
    assert "created inside the cell" in out and "not profiled" in out
    result, out, err, outputs = run(ip, "%%edgebench profile\nx = 1 + 1\n")
    assert result.success and outputs == []
    assert out.strip() == "no engine served a request in this cell: nothing to profile"


def test_profile_cell_error_ends_profiling_and_says_so(ip, engines):
    a, b = engines
    result, out, err, outputs = run(ip, "%%edgebench profile\neng_a.run(xa)\n1 / 0\n")
    assert not result.success
    assert "ZeroDivisionError" in out + err
    assert err.strip().splitlines()[-1] == "UsageError: the cell failed (see above); no profile shown"
    assert outputs == []
    assert a.session._profiling is None and b.session._profiling is None


def test_profile_cell_skips_an_engine_already_profiled(ip, engines):
    a, b = engines
    with eb.profile(a):
        result, out, err, _outputs = run(ip, "%%edgebench profile -o prof\neng_b.run(xb)\n")
        assert result.success, err
        assert "already being profiled: skipped" in out
        assert ip.user_ns["prof"].engine is b
        assert_one_line_usage_error(ip, "%%edgebench profile eng_a\neng_a.run(xa)\n", "profil")
