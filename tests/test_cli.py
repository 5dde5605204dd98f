"""The `edgebench` command, the demo tour and the HTML report, run in-process on real models."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import onnx
import pytest

import edgebench as eb
from edgebench import cli
from edgebench.errors import BenchmarkError

from ._models import mlp_proto

HEAVY = ["torch", "onnxruntime", "bokeh", "pandas"]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-model") / "tiny.onnx"
    onnx.save(mlp_proto(), str(path))
    return path


def _one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgebench: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, err)


# --------------------------------------------------------------------------------------------
# entry point, --help, import weight
# --------------------------------------------------------------------------------------------
def test_console_script_runs_info_json():
    # the script installed beside this interpreter (a venv's), else the one on PATH
    exe = shutil.which("edgebench", path=os.path.dirname(sys.executable)) or shutil.which("edgebench")
    if exe is None:
        pytest.skip("the edgebench console script is not installed (pip install -e .)")
    out = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["versions"]["edgebench"] == eb.__version__
    assert any(d["name"] == "cpu" and d["available"] for d in info["devices"])


def test_import_cli_is_light():
    code = ("import sys, json, edgebench.cli as c; p = c.build_parser(); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("info", "bench", "zoo", "demo"):
        assert name in out
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--scenario" in out and "server" in out and "--latency-bound-ms" in out


def test_commands_are_a_registry(capsys, monkeypatch):
    """A later subcommand plugs in with one builder; unexpected errors give exit 1, ^C 130."""
    def build(sub):
        p = sub.add_parser("boom")
        p.add_argument("--kind", default="bug")

        def run(args):
            if args.kind == "interrupt":
                raise KeyboardInterrupt
            if args.kind == "user":
                raise BenchmarkError("bad setup", "fix it")
            raise RuntimeError("something\nbroke")
        p.set_defaults(func=run)

    monkeypatch.setitem(cli.COMMANDS._items, "boom", build)
    monkeypatch.delenv("EDGEBENCH_DEBUG", raising=False)
    assert cli.main(["boom"]) == 1
    err = capsys.readouterr().err
    _one_line_error(err, "RuntimeError: something broke", "EDGEBENCH_DEBUG=1")
    assert cli.main(["boom", "--kind", "user"]) == 2
    _one_line_error(capsys.readouterr().err, "bad setup", "fix it")
    assert cli.main(["boom", "--kind", "interrupt"]) == 130
    monkeypatch.setenv("EDGEBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="broke"):
        cli.main(["boom"])


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------
def test_info_text(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    cpu = eb.devices.cpu_info()
    assert cpu.model in out
    for flag in ("AVX2", "AVX-512", "VNNI", "AMX"):
        assert flag in out
    assert "onnxruntime" in out and "Devices" in out and "Backends" in out
    assert f"python {sys.version.split()[0]}" in out
    # every absent device is listed with its reason
    for d in eb.devices():
        assert d.name in out
        if not d.available:
            assert d.reason.split()[0] in out


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"versions", "cpu", "devices", "backends"}
    assert set(info["versions"]) == {"python", "edgebench", "numpy", "onnx", "onnxruntime", "torch"}
    import onnxruntime

    assert info["versions"]["onnxruntime"] == onnxruntime.__version__
    cpu = eb.devices.cpu_info()
    assert info["cpu"]["features"] == {"AVX2": "avx2" in cpu.isa, "AVX-512": cpu.has_avx512,
                                       "VNNI": cpu.has_vnni, "AMX": cpu.has_amx}
    assert info["cpu"]["isa"] == list(cpu.isa)
    ort = next(b for b in info["backends"] if b["name"] == "onnxruntime")
    assert ort["available"] and "cpu" in ort["devices"]
    assert all(d["available"] or d["reason"] for d in info["devices"])


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------
def test_bench_onnx_file_json(onnx_file, capsys):
    rc = cli.main(["bench", str(onnx_file), "--duration", "0.5", "--threads", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(out)
    assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
    assert s["throughput"] > 10  # a 16-32-4 MLP runs far faster than this on any CPU
    assert "%|" not in err  # no progress bar with --json


def test_bench_text_shows_table_and_progress(onnx_file, capsys):
    rc = cli.main(["bench", str(onnx_file), "--duration", "0.4", "--scenario", "server", "--qps", "200",
                   "--latency-bound-ms", "50"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for key in ("p50", "p90", "p99", "throughput", "stable", "cpu", "server"):
        assert key in out
    assert "VALID" in out  # VALID or INVALID: <reasons>
    assert eb.devices.cpu_info().model in out
    assert "%|" in err  # the tqdm bar went to stderr


@pytest.mark.torch
def test_bench_zoo_model(zoo_cache, capsys):
    rc = cli.main(["bench", "zoo:mlp", "--duration", "0.5", "--json", "--batch-size", "4"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(out)
    assert s["p50_ms"] > 0 and s["throughput"] > 0
    assert (zoo_cache / "mlp-v1.onnx").is_file()


@pytest.mark.parametrize("argv, needles", [
    (["bench", "{missing}"], ["no such model file", "missing.onnx"]),
    (["bench", "{model}", "--scenario", "bogus"], ["invalid choice", "bogus"]),
    (["bench", "{model}", "--scenario", "server"], ["--qps"]),
    (["bench", "{model}", "--scenario", "server", "--qps", "10"], ["--latency-bound-ms"]),
    (["bench", "{model}", "--batch-size", "0"], ["--batch-size", "positive"]),
    (["bench", "{model}", "--duration", "-1"], ["--duration", "positive"]),
    (["bench", "{model}", "--duration", "soon"], ["--duration"]),
    (["bench", "{model}", "--backend", "nope", "--duration", "0.1"],
     ["unknown backend 'nope'", "onnxruntime"]),
    (["bench", "zoo:nothing"], ["unknown zoo model 'nothing'", "mlp"]),
    (["zoo", "export", "nothing", "{tmp}/x.onnx"], ["unknown zoo model 'nothing'"]),
    (["demo", "--models", "nothing"], ["unknown zoo model 'nothing'"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_arguments_exit_2_with_one_line(argv, needles, onnx_file, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing.onnx", model=onnx_file, tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    _one_line_error(capsys.readouterr().err, *needles)
    assert not list(tmp_path.glob("*.html"))


# --------------------------------------------------------------------------------------------
# zoo
# --------------------------------------------------------------------------------------------
def test_zoo_list(capsys):
    assert cli.main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in eb.zoo.names():
        assert name in out
        assert str(eb.zoo.info(name).inputs[0]) in out
    assert cli.main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == eb.zoo.names()
    assert {r["name"]: r["random_weights"] for r in rows}["digits"] is False


@pytest.mark.torch
def test_zoo_export_writes_a_loadable_file(zoo_cache, tmp_path, capsys):
    path = tmp_path / "sub" / "mlp.onnx"
    assert cli.main(["zoo", "export", "mlp", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    model = eb.load(path)
    assert [s.name for s in model.inputs] == ["input"] and model.inputs[0].shape[1:] == (784,)
    assert model.sha256 == eb.zoo.load("mlp").sha256


# --------------------------------------------------------------------------------------------
# demo and the HTML report
# --------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_demo_writes_an_offline_report(zoo_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--models", "mlp", "--duration", "0.3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["model", "backend", "p50", "ms", "p90", "ms", "p99", "ms", "throughput/s",
                                "size", "MB", "valid"]
    runs = {tuple(line.split()[:2]) for line in lines[2:] if line.startswith("mlp")}
    expected = {("mlp", b.name) for b in eb.backends() if b.available and "cpu" in b.devices}
    assert runs == expected and ("mlp", "onnxruntime") in runs
    path = (tmp_path / "edgebench-report.html").resolve()
    assert f"report written to {path}" in out
    html = path.read_text()
    assert "cdn.bokeh.org" not in html and "<script src=" not in html
    assert "BEGIN bokeh.min.js" in html  # BokehJS inline: the file works offline
    for _, backend in runs:
        assert f"mlp / {backend}" in html
    assert eb.devices.cpu_info().model in html


def test_report_from_real_runs(onnx_file, tmp_path):
    from edgebench.report_html import write_report

    reports = []
    for threads in (1, 2):
        with eb.Engine(onnx_file, threads=threads) as engine:
            reports.append(eb.benchmark(engine, "single_stream", duration_s=0.3, warmup_s=0.1))
    path = write_report(reports, tmp_path / "r" / "report.html", title="two runs",
                        labels=["tiny / 1 thread", "tiny / 2 threads"])
    assert path == (tmp_path / "r" / "report.html").resolve()
    html = path.read_text()
    assert "<title>two runs</title>" in html and "tiny / 2 threads" in html
    assert "cdn.bokeh.org" not in html and "BEGIN bokeh.min.js" in html
    assert f"{reports[0].p50_ms:.3f}" in html
    with pytest.raises(eb.errors.ConfigError, match="labels"):
        write_report(reports, tmp_path / "x.html", labels=["only one"])


def test_report_without_bokeh_is_plain_html(onnx_file, tmp_path, monkeypatch):
    from edgebench.report_html import write_report

    with eb.Engine(onnx_file, threads=1) as engine:
        report = eb.benchmark(engine, "single_stream", duration_s=0.2, warmup_s=0.05)
    monkeypatch.setitem(sys.modules, "bokeh.embed", None)  # as if bokeh were not installed
    html = write_report([report], tmp_path / "plain.html", labels=["tiny"]).read_text()
    assert "bokeh is not installed" in html and "<script" not in html
    assert f"{report.p99_ms:.3f}" in html and "tiny" in html
    assert os.path.getsize(tmp_path / "plain.html") < 100_000
