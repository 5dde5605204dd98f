"""edgebench.devices: the hardware that is really here, and why the rest is absent."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import edgebench.cpu
from edgebench import devices as dv
from edgebench.errors import ConfigError, DeviceUnavailableError

ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "sve", "asimd")


def _proc_cpuinfo() -> dict:
    """An independent parse of /proc/cpuinfo: logical CPUs, (package, core) pairs, flags."""
    with open("/proc/cpuinfo") as f:
        blocks = [b for b in f.read().split("\n\n") if b.strip()]
    cores, flags, logical = set(), set(), 0
    for b in blocks:
        kv = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in b.splitlines()))
        if "processor" in kv:
            logical += 1
        if "core id" in kv:
            cores.add((kv.get("physical id"), kv["core id"]))
        flags |= set((kv.get("flags") or kv.get("Features") or "").split())
    return {"logical": logical, "physical": len(cores), "flags": flags}


def _gpu_really_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd") or bool(
        [d for d in dv.devices() if d.kind == "gpu" and d.available])


def test_import_loads_neither_torch_nor_onnxruntime():
    code = ("import sys, edgebench.devices; "
            "bad = [m for m in ('torch', 'onnxruntime', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_cpu_row_is_available_and_described():
    table = dv.devices()
    assert table[0].name == "cpu"
    cpu = table[0]
    assert cpu.kind == "cpu" and cpu.available and cpu.reason is None
    assert cpu.model and cpu.model == dv.cpu_info().model
    d = cpu.details
    assert d["logical_cores"] == os.cpu_count()
    assert 1 <= d["physical_cores"] <= d["logical_cores"]
    assert 1 <= d["usable_cores"] <= d["logical_cores"]
    assert d["memory_bytes"] > 2**26
    assert "CPUExecutionProvider" in d["providers"]


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo (Linux)")
def test_cpu_info_matches_proc_cpuinfo():
    ref = _proc_cpuinfo()
    info = dv.cpu_info()
    assert info.logical_cores == ref["logical"]
    if ref["physical"]:
        assert info.physical_cores == ref["physical"]
    for flag in ISA_FLAGS:
        assert (flag in info.isa) == (flag in ref["flags"]), flag
    assert info.has_avx512 == ("avx512f" in ref["flags"])
    assert info.has_vnni == bool({"avx512_vnni", "avx_vnni"} & ref["flags"])
    assert info.has_amx == ("amx_tile" in ref["flags"] and bool({"amx_int8", "amx_bf16"} & ref["flags"]))
    assert set(info.isa) <= set(edgebench.cpu._ISA)  # only the inference-relevant extensions, in a fixed order
    assert list(info.isa) == [f for f in edgebench.cpu._ISA if f in info.isa]
    if "asimd" in ref["flags"]:
        assert "neon" in info.isa


def test_table_shape_pandas_and_repr():
    table = dv.devices()
    names = [d.name for d in table]
    assert len(names) == len(set(names))
    assert {"cpu", "cuda:0", "gpu:rocm", "gpu:directml", "npu:openvino", "npu:qnn", "npu:vitisai",
            "npu:coreml"} <= set(names)
    for d in table:
        assert d.kind in ("cpu", "gpu", "npu")
        assert (d.reason is None) == d.available, d  # absent rows always say why
        if not d.available:
            assert len(d.reason) > 20
    df = table.to_pandas()
    assert list(df["name"]) == names
    text = repr(table)
    assert text.splitlines()[0].split() == ["name", "kind", "available", "model", "reason"]
    assert "<table" in table._repr_html_()


def test_eb_devices_is_callable():
    import edgebench as eb

    assert eb.devices() is dv.devices()
    assert eb.devices.resolve("cpu").name == "cpu"


def test_devices_cached_unless_refresh():
    a = dv.devices()
    assert dv.devices() is a
    b = dv.devices(refresh=True)
    assert b is not a
    assert [d.name for d in b] == [d.name for d in a]
    assert dv.devices() is b


def test_cuda_absent_with_concrete_reason():
    if _gpu_really_present():
        pytest.skip("a GPU is present on this machine")
    row = {d.name: d for d in dv.devices()}["cuda:0"]
    assert row.kind == "gpu" and not row.available and row.model is None
    assert "CUDAExecutionProvider" in row.reason  # what onnxruntime lacks
    if shutil.which("nvidia-smi") is None:
        assert "nvidia-smi not on PATH" in row.reason
    if sys.platform.startswith("linux"):
        assert "/proc/driver/nvidia/version missing" in row.reason
    try:
        import torch
    except ImportError:
        assert "PyTorch is not installed" in row.reason
    else:
        assert torch.__version__ in row.reason


def test_npu_rows_name_their_provider():
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    rows = {d.name: d for d in dv.devices()}
    for name, provider, *_ in dv._PROVIDED:
        row = rows[name]
        if provider not in installed:
            assert not row.available
            assert f"onnxruntime provider {provider} not installed" in row.reason


def test_resolve_cpu_and_forms():
    assert dv.resolve("cpu").name == "cpu"
    assert dv.resolve(" CPU ").name == "cpu"
    assert dv.resolve("cpu:0").available


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "", "cuda0", "npu:foo", "gpu:-1"])
def test_resolve_malformed_lists_accepted_forms(bad):
    with pytest.raises(ConfigError) as e:
        dv.resolve(bad)
    assert "cuda:N" in str(e.value) and "npu:openvino" in str(e.value)


def test_resolve_rejects_non_strings():
    with pytest.raises(ConfigError, match="string"):
        dv.resolve(0)


def test_resolve_absent_devices_raise_with_the_reason():
    if _gpu_really_present():
        pytest.skip("a GPU is present on this machine")
    reason = {d.name: d for d in dv.devices()}["cuda:0"].reason
    for asked in ("cuda", "cuda:0", "CUDA:0", "gpu:0"):
        with pytest.raises(DeviceUnavailableError) as e:
            dv.resolve(asked)
        assert reason in str(e.value)
    with pytest.raises(DeviceUnavailableError, match="no GPU is available"):
        dv.resolve("gpu")
    with pytest.raises(DeviceUnavailableError, match="cuda:7"):
        dv.resolve("cuda:7")


def test_resolve_absent_npu():
    rows = {d.name: d for d in dv.devices()}
    if rows["npu:qnn"].available:
        pytest.skip("a QNN NPU is present")
    with pytest.raises(DeviceUnavailableError) as e:
        dv.resolve("npu:qnn")
    assert rows["npu:qnn"].reason in str(e.value)
    assert isinstance(e.value, RuntimeError)  # DeviceUnavailableError is a BackendUnavailableError


def test_fingerprint_stable_within_and_across_processes():
    fp = dv.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert dv.fingerprint() == fp
    dv.devices(refresh=True)
    assert dv.fingerprint() == fp
    code = "import edgebench.devices as d; print(d.fingerprint())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == fp


def test_fingerprint_depends_on_the_hardware_description():
    c = dv.cpu_info()
    base = dv._fingerprint(c.model, c.arch, c.isa, c.physical_cores, c.logical_cores, [])
    assert base == dv._fingerprint(c.model, c.arch, tuple(reversed(c.isa)), c.physical_cores, c.logical_cores, [])
    assert base != dv._fingerprint(c.model, c.arch, c.isa[:-1], c.physical_cores, c.logical_cores, [])
    assert base != dv._fingerprint(c.model, c.arch, c.isa, c.physical_cores, c.logical_cores + 1, [])
    assert base != dv._fingerprint(c.model, c.arch, c.isa, c.physical_cores, c.logical_cores, ["NVIDIA H100"])


def test_a_hanging_nvidia_smi_does_not_hang_devices(tmp_path, monkeypatch):
    """A wedged driver makes nvidia-smi hang; the probe gives up and says so."""
    if _gpu_really_present():
        pytest.skip("a GPU is present; do not shadow the real nvidia-smi")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nsleep 30\n")  # the sleep child must die with it too (process group)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(dv, "_SMI_TIMEOUT", 0.5)
    t0 = time.monotonic()
    try:
        table = dv.devices(refresh=True)
    finally:
        monkeypatch.undo()
        dv.devices(refresh=True)
    assert time.monotonic() - t0 < 15
    row = {d.name: d for d in table}["cuda:0"]
    assert not row.available
    assert "nvidia-smi did not answer within 0.5 s" in row.reason


def test_a_failing_nvidia_smi_becomes_a_reason(tmp_path, monkeypatch):
    if _gpu_really_present():
        pytest.skip("a GPU is present; do not shadow the real nvidia-smi")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                   "exit 9\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    try:
        table = dv.devices(refresh=True)
    finally:
        monkeypatch.undo()
        dv.devices(refresh=True)
    reason = {d.name: d for d in table}["cuda:0"].reason
    assert "exit 9" in reason and "could not communicate with the driver" in reason


@pytest.mark.gpu
@pytest.mark.torch
def test_torch_backend_runs_on_cuda():
    torch = pytest.importorskip("torch")
    try:
        dv.resolve("cuda")
    except DeviceUnavailableError as e:
        pytest.skip(str(e))
    import edgebench.backends as backends
    from edgebench.model import load

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    model = load(module, example_inputs=(torch.randn(2, 8),))
    session = backends.get("torch").compile(model, "cuda")
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    (y,) = session.run({"input": x})
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3)
    assert next(module.parameters()).device.type == "cpu"  # the user's module stays where it was
    assert next(session.module.parameters()).device.type == "cuda"
    session.start_profiling()
    session.run({"input": x})
    events = session.end_profiling()
    assert any(e["cat"] == "kernel" for e in events)
