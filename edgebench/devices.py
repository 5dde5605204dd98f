"""What hardware is really here: the CPU (with its ISA extensions), GPUs and NPUs.

Every device edgebench knows how to use is listed; one that is not present, or that no
installed backend can drive, is listed as absent with the concrete reason::

    >>> import edgebench as eb
    >>> eb.devices()                                   # doctest: +SKIP
    name          kind  available  model                     reason
    cpu           cpu   yes        Intel(R) Xeon(R) ...
    cuda:0        gpu   no                                   no NVIDIA driver: ...

Probing never raises and never hangs: a failing probe becomes part of a reason, and
``nvidia-smi`` runs with a short timeout.  Importing this module imports neither torch nor
onnxruntime; :func:`devices` imports them only when they are installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

from ._callable import make_callable
from ._table import Table
from .cpu import CPUInfo, cpu_info, usable_cores
from .errors import ConfigError, DeviceUnavailableError

__all__ = ["Device", "CPUInfo", "cpu_info", "devices", "resolve", "fingerprint"]

_SMI_TIMEOUT = 5.0  # seconds; nvidia-smi can hang on a wedged driver
_CPU_PROVIDERS = ("CPUExecutionProvider", "DnnlExecutionProvider", "XnnpackExecutionProvider",
                  "OpenVINOExecutionProvider", "ACLExecutionProvider", "ArmNNExecutionProvider")
# accelerators reached only through an onnxruntime provider: name, provider, what it drives, how to get it
_PROVIDED = (
    ("gpu:directml", "DmlExecutionProvider", "DirectX 12 GPU", "on Windows: pip install onnxruntime-directml"),
    ("npu:openvino", "OpenVINOExecutionProvider", "Intel NPU", "pip install onnxruntime-openvino"),
    ("npu:qnn", "QNNExecutionProvider", "Qualcomm Hexagon NPU", "pip install onnxruntime-qnn"),
    ("npu:vitisai", "VitisAIExecutionProvider", "AMD Ryzen AI NPU", "install the Ryzen AI software"),
    ("npu:coreml", "CoreMLExecutionProvider", "Apple Neural Engine", "the macOS onnxruntime wheel has it"),
)
_FORMS = "cpu, cuda, cuda:N, gpu, npu, gpu:rocm, " + ", ".join(n for n, *_ in _PROVIDED)


@dataclass(frozen=True)
class Device:
    """One row of :func:`devices`.

    Attributes
    ----------
    name
        ``"cpu"``, ``"cuda:0"``, ``"gpu:rocm"``, ``"npu:openvino"``, ...
    kind
        ``"cpu"``, ``"gpu"`` or ``"npu"``.
    available
        Present *and* usable by an installed backend.
    model
        The hardware's name when known (CPU brand, GPU name).
    reason
        Why it is not available (``None`` when it is).
    details
        Cores, ISA, memory, compute capability, driver, and the onnxruntime ``providers``
        and ``torch`` support that can use it.
    """

    name: str
    kind: str
    available: bool
    model: str | None = None
    reason: str | None = None
    details: dict = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------
def _cpu_row(ort: dict, tch: dict) -> Device:
    c = cpu_info()
    usable = usable_cores()
    details = {
        "vendor": c.vendor, "arch": c.arch, "physical_cores": c.physical_cores,
        "logical_cores": c.logical_cores, "usable_cores": usable, "isa": list(c.isa),
        "memory_bytes": c.memory_bytes,
        "providers": [p for p in ort.get("providers", ()) if p in _CPU_PROVIDERS],
        "torch": bool(tch.get("version")),
    }
    return Device("cpu", "cpu", True, c.model, None, details)


# --------------------------------------------------------------------------------------------
# probes: each returns a dict and never raises
# --------------------------------------------------------------------------------------------
def _probe_onnxruntime() -> dict:
    if find_spec("onnxruntime") is None:
        return {"error": "onnxruntime is not installed (pip install onnxruntime)"}
    try:
        import onnxruntime as ort

        return {"version": ort.__version__, "providers": list(ort.get_available_providers())}
    except Exception as e:  # noqa: BLE001
        return {"error": f"onnxruntime fails to import ({type(e).__name__}: {e})"}


def _probe_torch() -> dict:
    try:
        if find_spec("torch") is None:
            return {"error": "PyTorch is not installed"}
        import torch

        info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda,
                                "hip": getattr(torch.version, "hip", None), "gpus": []}
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                info["gpus"].append({"name": p.name, "memory_bytes": int(p.total_memory),
                                     "compute_capability": f"{p.major}.{p.minor}",
                                     "multiprocessors": p.multi_processor_count})
        return info
    except Exception as e:  # noqa: BLE001
        return {"error": f"PyTorch fails to probe CUDA ({type(e).__name__}: {e})"}


def _run(cmd: list[str], timeout: float) -> tuple[str | None, str | None]:
    """(stdout, None) or (None, why it failed); kills the whole process group on timeout."""
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    except OSError as e:
        return None, f"{cmd[0]} cannot be started ({e.strerror or e})"
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, 9)
        except (OSError, AttributeError):
            p.kill()
        try:
            p.communicate(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        return None, f"{os.path.basename(cmd[0])} did not answer within {timeout:g} s"
    if p.returncode != 0:
        msg = (err or out or "").strip().splitlines()
        return None, f"{os.path.basename(cmd[0])} failed (exit {p.returncode}: {msg[0] if msg else 'no output'})"
    return out, None


def _probe_nvidia() -> dict:
    info: dict[str, Any] = {"gpus": [], "errors": []}
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as f:
            m = re.search(r"Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", f.read())
            info["driver"] = m.group(1) if m else "unknown"
    except OSError:
        if sys.platform.startswith("linux"):
            info["errors"].append("no NVIDIA driver: /proc/driver/nvidia/version missing")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        info["errors"].append("nvidia-smi not on PATH")
        return info
    fields = "index,name,memory.total,driver_version,compute_cap"
    out, err = _run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], _SMI_TIMEOUT)
    if out is None and "did not answer" not in (err or ""):  # old drivers lack compute_cap: ask without it
        out, err = _run([smi, f"--query-gpu={fields.rsplit(',', 1)[0]}", "--format=csv,noheader,nounits"],
                        _SMI_TIMEOUT)
    if out is None:
        info["errors"].append(err)
        return info
    for line in out.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4 or not cols[0].isdigit():
            continue
        gpu: dict[str, Any] = {"name": cols[1], "driver": cols[3]}
        if cols[2].isdigit():
            gpu["memory_bytes"] = int(cols[2]) * 2**20
        if len(cols) > 4 and re.fullmatch(r"\d+\.\d+", cols[4]):
            gpu["compute_capability"] = cols[4]
        info["gpus"].append(gpu)
        info.setdefault("driver", cols[3])
    if not info["gpus"]:
        info["errors"].append("nvidia-smi lists no GPU")
    return info


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------
def _torch_reason(tch: dict) -> str:
    if "error" in tch:
        return tch["error"]
    if not tch["cuda"] and not tch["hip"]:
        return f"torch.cuda.is_available() is False (CPU-only torch build {tch['version']})"
    build = f"CUDA {tch['cuda']}" if tch["cuda"] else f"ROCm {tch['hip']}"
    return f"torch.cuda.is_available() is False (torch {tch['version']} built for {build} sees no GPU)"


def _cuda_rows(ort: dict, tch: dict, nv: dict) -> list[Device]:
    providers = [p for p in ort.get("providers", ()) if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    gpus = tch.get("gpus") or nv["gpus"]  # torch's numbering honours CUDA_VISIBLE_DEVICES
    by_torch = bool(tch.get("gpus"))
    if not providers:
        ort_why = ort.get("error") or f"onnxruntime {ort['version']} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    else:
        ort_why = f"onnxruntime has {', '.join(providers)} but no GPU is visible to it"
    if not gpus:
        parts = list(nv["errors"])
        if nv.get("driver"):
            parts.insert(0, f"NVIDIA driver {nv['driver']} is loaded but no GPU could be enumerated")
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden is not None and hidden.strip() in ("", "-1"):
            parts.append(f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU")
        parts += [ort_why, _torch_reason(tch)]
        return [Device("cuda:0", "gpu", False, None, "; ".join(parts), {"providers": providers, "torch": False})]
    rows = []
    for i, g in enumerate(gpus):
        details = {k: v for k, v in g.items() if k != "name"}
        details.setdefault("driver", nv.get("driver"))
        details.update(providers=providers, torch=by_torch, api="hip" if tch.get("hip") else "cuda")
        ok = by_torch or bool(providers)
        why = None if ok else f"NVIDIA GPU present but no installed backend can use it: {ort_why}; {_torch_reason(tch)}"
        rows.append(Device(f"cuda:{i}", "gpu", ok, g["name"], why, details))
    return rows


def _rocm_row(ort: dict, tch: dict) -> Device:
    providers = [p for p in ort.get("providers", ()) if p in ("ROCMExecutionProvider", "MIGraphXExecutionProvider")]
    kfd = os.path.exists("/dev/kfd")
    by_torch = bool(tch.get("hip") and tch.get("gpus"))
    model = tch["gpus"][0]["name"] if by_torch else None
    if by_torch or (kfd and providers):
        return Device("gpu:rocm", "gpu", True, model, None, {"providers": providers, "torch": by_torch})
    parts = [] if kfd else ["no AMD ROCm driver: /dev/kfd missing"]
    if not providers:
        parts.append("onnxruntime has no ROCMExecutionProvider or MIGraphXExecutionProvider (install onnxruntime-rocm)")
    if not tch.get("hip"):
        parts.append("torch is not a ROCm build" if "version" in tch else tch.get("error", "PyTorch is not installed"))
    return Device("gpu:rocm", "gpu", False, None, "; ".join(parts), {"providers": providers, "torch": False})


def _provided_row(name: str, provider: str, what: str, hint: str, ort: dict) -> Device:
    kind = name.split(":")[0]
    details = {"providers": [provider] if provider in ort.get("providers", ()) else [], "drives": what}

    def row(ok: bool, why: str | None, model: str | None = None) -> Device:
        return Device(name, kind, ok, model, why, details)

    if not details["providers"]:
        return row(False, ort.get("error") or f"onnxruntime provider {provider} not installed ({hint})")
    machine = platform.machine().lower()
    if name == "npu:openvino":
        try:
            import openvino

            core = openvino.Core()
        except ImportError:
            ok = os.path.isdir("/dev/accel")
            return row(ok, None if ok else "no NPU driver: /dev/accel missing")
        if "NPU" in core.available_devices:
            return row(True, None, core.get_property("NPU", "FULL_DEVICE_NAME"))
        return row(False, f"{provider} is installed but OpenVINO sees no NPU "
                          f"(devices: {', '.join(core.available_devices)})")
    if name == "npu:qnn" and machine not in ("arm64", "aarch64"):
        return row(False, f"{provider} is installed but this is not an ARM64 Snapdragon machine ({machine})")
    if name == "npu:coreml" and not (sys.platform == "darwin" and machine == "arm64"):
        return row(False, f"{provider} is installed but the Neural Engine needs Apple silicon")
    details["note"] = "the hardware itself is checked when a session is created"
    return row(True, None, what)


def _safe(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a failing probe becomes a reason, never an exception
        return e


_CACHE: Table | None = None
_LOCK = threading.Lock()


def devices(refresh: bool = False) -> Table:
    """Every device edgebench can target, with whether it is usable here and why not.

    Parameters
    ----------
    refresh
        Probe again instead of returning this process's cached answer.

    Returns
    -------
    Table
        :class:`Device` rows (``.to_pandas()`` for a DataFrame): ``cpu`` first, then
        ``cuda:N`` (``cuda:0`` absent with a reason when there is no NVIDIA GPU),
        ``gpu:rocm``, ``gpu:directml``, then the NPUs.
    """
    global _CACHE
    with _LOCK:
        if _CACHE is not None and not refresh:
            return _CACHE
        ort, tch, nv = (_safe(p) for p in (_probe_onnxruntime, _probe_torch, _probe_nvidia))
        ort = ort if isinstance(ort, dict) else {"error": f"onnxruntime probe failed ({ort!r})"}
        tch = tch if isinstance(tch, dict) else {"error": f"PyTorch probe failed ({tch!r})"}
        nv = nv if isinstance(nv, dict) else {"gpus": [], "errors": [f"NVIDIA probe failed ({nv!r})"]}
        rows: list[Device] = []
        builders: list[tuple[str, str, Any]] = [
            ("cpu", "cpu", lambda: [_cpu_row(ort, tch)]),
            ("cuda:0", "gpu", lambda: _cuda_rows(ort, tch, nv)),
            ("gpu:rocm", "gpu", lambda: [_rocm_row(ort, tch)]),
        ]
        builders += [(a[0], a[0][:3], lambda a=a: [_provided_row(*a, ort)]) for a in _PROVIDED]
        for name, kind, build in builders:
            got = _safe(build)
            if isinstance(got, Exception):
                if name == "cpu":  # the CPU is there even when describing it failed
                    got = [Device("cpu", "cpu", True, platform.machine() or None, None, {"error": repr(got)})]
                else:
                    got = [Device(name, kind, False, None, f"probe failed: {type(got).__name__}: {got}", {})]
            rows.extend(got)
        _CACHE = Table(rows, columns=("name", "kind", "available", "model", "reason"))
        return _CACHE


# --------------------------------------------------------------------------------------------
# resolve / fingerprint
# --------------------------------------------------------------------------------------------
def resolve(device: Any) -> Device:
    """The available :class:`Device` a device string names.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"`` (= ``"cuda:0"``), ``"cuda:N"``, ``"gpu"`` / ``"npu"`` (the first
        available one of that kind), ``"gpu:rocm"``, ``"npu:openvino"``, ... (a
        ``torch.device`` is accepted too).

    Raises
    ------
    DeviceUnavailableError
        The device is absent here; the message says why.
    ConfigError
        The string is not a device name; the message lists the accepted forms.
    """
    if type(device).__name__ == "device" and hasattr(device, "type"):
        device = str(device)
    if not isinstance(device, str):
        raise ConfigError(f"a device is a string, got {type(device).__name__} {device!r}", f"accepted: {_FORMS}")
    s = device.strip().lower()
    table = devices()
    by_name = {d.name: d for d in table}
    if s in ("cpu", "cpu:0"):
        return by_name["cpu"]
    m = re.fullmatch(r"(cuda|gpu)(?::(\d+))?", s)
    if m:
        if m.group(1) == "gpu" and m.group(2) is None:
            return _first(table, "gpu", device)
        name = f"cuda:{int(m.group(2) or 0)}"
        if name not in by_name:
            cudas = [d.name for d in table if d.name.startswith("cuda:") and d.available]
            if not cudas:
                raise DeviceUnavailableError(f"device {device!r} is not available: {by_name['cuda:0'].reason}")
            raise DeviceUnavailableError(f"device {device!r} does not exist on this machine",
                                         f"it has {', '.join(cudas)}")
        return _check(by_name[name], device)
    if s == "npu":
        return _first(table, "npu", device)
    if s in by_name:
        return _check(by_name[s], device)
    raise ConfigError(f"{device!r} is not a device name", f"accepted forms: {_FORMS}")


def _check(d: Device, asked: str) -> Device:
    if not d.available:
        raise DeviceUnavailableError(f"device {asked!r} is not available: {d.reason}",
                                     "see eb.devices() for what this machine has")
    return d


def _first(table: Table, kind: str, asked: str) -> Device:
    for d in table:
        if d.kind == kind and d.available:
            return d
    why = "; ".join(f"{d.name}: {d.reason}" for d in table if d.kind == kind)
    raise DeviceUnavailableError(f"no {kind.upper()} is available ({why})", "see eb.devices() for what this machine has")


def fingerprint() -> str:
    """A short, stable hash of this machine's hardware (CPU model, ISA, cores, GPUs/NPUs).

    Results stores key measurements by it, so numbers from different hardware never mix.
    """
    c = cpu_info()
    accel = [d.model for d in devices() if d.kind != "cpu" and d.model]
    return _fingerprint(c.model, c.arch, c.isa, c.physical_cores, c.logical_cores, accel)


def _fingerprint(model: str, arch: str, isa: Any, physical: int, logical: int, accelerators: Any) -> str:
    blob = json.dumps([model, arch, sorted(isa), physical, logical, sorted(accelerators)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


make_callable(__name__, "devices")  # eb.devices() and `import edgebench.devices` both work
